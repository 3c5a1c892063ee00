# How terraform-output.json was recorded (Terraform 1.11.4; no cloud, no provider):
#   terraform init && terraform apply -auto-approve && terraform output -json > terraform-output.json
# The outputs have infra/outputs.tf's names and shape (tests/deploy/test_terraform.py checks
# that), with the addresses of a made-up apply with web_count = 3 (documentation ranges).
locals {
  web = [
    { name = "webchat-web-1", public_ip = "203.0.113.21", private_ip = "10.42.1.21" },
    { name = "webchat-web-2", public_ip = "203.0.113.22", private_ip = "10.42.1.22" },
    { name = "webchat-web-3", public_ip = "203.0.113.23", private_ip = "10.42.1.23" },
  ]
}
output "hosts" {
  value = {
    lb         = [{ name = "webchat-lb", public_ip = "203.0.113.10", private_ip = "10.42.1.10" }]
    web        = [for host in local.web : { name = host.name, public_ip = host.public_ip, private_ip = host.private_ip }]
    redis      = [{ name = "webchat-redis", public_ip = "203.0.113.30", private_ip = "10.42.1.30" }]
    monitoring = [{ name = "webchat-monitoring", public_ip = "203.0.113.40", private_ip = "10.42.1.40" }]
  }
}
output "ssh_user" { value = "admin" }
output "lb_public_ip" { value = "203.0.113.10" }
