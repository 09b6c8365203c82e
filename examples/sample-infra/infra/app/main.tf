module "tags" {
  source      = "../../modules/tags"
  service     = "app"
  environment = terraform.workspace
}

variable "replicas" {
  type    = number
  default = 2
}

resource "terraform_data" "service" {
  input = {
    image    = "registry.example/app:1.4.2"
    replicas = var.replicas
    tags     = module.tags.tags
  }
}
