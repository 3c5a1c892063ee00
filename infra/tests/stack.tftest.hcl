# `terraform test` (make terraform-test): plans and applies this configuration against a mocked
# AWS provider, so it runs without an AWS account. It needs a terraform binary and the
# hashicorp/aws provider schema; tests/deploy/test_terraform.py checks the same files without
# either, on every `make test`.

mock_provider "aws" {
  mock_data "aws_ami" {
    defaults = { id = "ami-0123456789abcdef0" }
  }
}

variables {
  admin_cidr     = "203.0.113.7/32"
  ssh_public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@laptop"
}

run "three_web_hosts" {
  command = apply

  variables {
    web_count = 3
  }

  assert {
    condition     = [for host in output.hosts.web : host.name] == ["webchat-web-1", "webchat-web-2", "webchat-web-3"]
    error_message = "hosts.web must list every web host by name"
  }

  assert {
    condition     = alltrue([for group in ["lb", "redis", "monitoring"] : length(output.hosts[group]) == 1])
    error_message = "lb, redis and monitoring must have one host each"
  }

  assert {
    condition     = output.ssh_user == "admin"
    error_message = "Debian's images log in as admin"
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.ssh.cidr_ipv4 == var.admin_cidr && aws_vpc_security_group_ingress_rule.ssh.from_port == 22
    error_message = "SSH must be open to admin_cidr only"
  }

  assert {
    condition     = contains(aws_instance.lb.vpc_security_group_ids, aws_security_group.public_web.id) && !contains(aws_instance.web[0].vpc_security_group_ids, aws_security_group.public_web.id)
    error_message = "only the load balancer may be in the public group"
  }
}

run "ssh_from_anywhere_is_refused" {
  command = plan

  variables {
    admin_cidr = "0.0.0.0/0"
  }

  expect_failures = [var.admin_cidr]
}

run "no_web_host_is_refused" {
  command = plan

  variables {
    web_count = 0
  }

  expect_failures = [var.web_count]
}

run "a_private_key_is_refused" {
  command = plan

  variables {
    ssh_public_key = "-----BEGIN OPENSSH PRIVATE KEY-----"
  }

  expect_failures = [var.ssh_public_key]
}
