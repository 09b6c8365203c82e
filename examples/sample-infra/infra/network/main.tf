module "tags" {
  source  = "../../modules/tags"
  service = "network"
}

resource "terraform_data" "vpc" {
  input = {
    cidr = "10.0.0.0/16"
    tags = module.tags.tags
  }
}

resource "terraform_data" "subnet" {
  count = 2
  input = {
    cidr = cidrsubnet("10.0.0.0/16", 8, count.index)
    vpc  = terraform_data.vpc.id
  }
}

output "vpc_id" {
  value = terraform_data.vpc.id
}
