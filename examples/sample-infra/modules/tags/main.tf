# Shared tags every project stamps on its resources.
variable "service" {
  type = string
}

variable "environment" {
  type    = string
  default = "dev"
}

output "tags" {
  value = {
    service     = var.service
    environment = var.environment
    managed_by  = "gitops-runner"
  }
}
