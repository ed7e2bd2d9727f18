from django.urls import path
from workspace import views

urlpatterns = [
    path("healthz", views.healthz),
    path("login", views.login),
    path("orgs/<str:org_id>/join", views.join_org),
    path("reports", views.create_report),
]
