"""gitops-runner: a self-hosted GitOps runner for Terraform."""

__version__ = "0.1.0"
