terraform {
  # optional() attributes, the aws_vpc_security_group_*_rule resources, `terraform test`.
  required_version = ">= 1.6.0, < 2.0.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # Pinned to one minor release; run `terraform init` and commit .terraform.lock.hcl.
      version = "~> 5.100.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, {
      Project   = "webchat"
      Stack     = var.name
      ManagedBy = "terraform"
    })
  }
}
