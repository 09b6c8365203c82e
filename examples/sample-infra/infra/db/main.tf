variable "admin_password" {
  type      = string
  default   = "s3cr3t-example-password"
  sensitive = true
}

resource "terraform_data" "database" {
  input = {
    engine   = "postgres"
    version  = "16"
    password = var.admin_password
  }
}

output "connection" {
  value     = "postgres://admin:${var.admin_password}@db.internal:5432/app"
  sensitive = true
}
