# The firewall, as security groups with one resource per rule (reviewable, and checked by
# tests/deploy/test_terraform.py): from outside the VPC only 80/443 reach the load balancer and
# 22 reaches the hosts from admin_cidr. Between the hosts (members of `internal`) everything
# is open: the app ports, Redis, the exporters and Prometheus' scrapes, which the Ansible
# roles bind to the private addresses.

resource "aws_security_group" "public_web" {
  name        = "${var.name}-public-web"
  description = "HTTP and HTTPS from anywhere (load balancer only)"
  vpc_id      = aws_vpc.main.id

  tags = { Name = "${var.name}-public-web" }
}

resource "aws_vpc_security_group_ingress_rule" "http" {
  security_group_id = aws_security_group.public_web.id
  description       = "HTTP (redirected to HTTPS by Nginx)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}

resource "aws_vpc_security_group_ingress_rule" "https" {
  security_group_id = aws_security_group.public_web.id
  description       = "HTTPS and WebSockets"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_security_group" "admin_ssh" {
  name        = "${var.name}-admin-ssh"
  description = "SSH from the admin network only"
  vpc_id      = aws_vpc.main.id

  tags = { Name = "${var.name}-admin-ssh" }
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  security_group_id = aws_security_group.admin_ssh.id
  description       = "SSH from admin_cidr"
  cidr_ipv4         = var.admin_cidr
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
}

resource "aws_security_group" "internal" {
  name        = "${var.name}-internal"
  description = "Traffic between the hosts of this stack, and their way out"
  vpc_id      = aws_vpc.main.id

  tags = { Name = "${var.name}-internal" }
}

resource "aws_vpc_security_group_ingress_rule" "internal" {
  security_group_id            = aws_security_group.internal.id
  description                  = "Any traffic from the other hosts of this stack"
  referenced_security_group_id = aws_security_group.internal.id
  ip_protocol                  = "-1"
}

# Out: Debian's archive, Grafana's APT repository, NTP. (AWS allows all egress by default,
# but Terraform removes that default rule from the groups it creates.)
resource "aws_vpc_security_group_egress_rule" "internal_out" {
  security_group_id = aws_security_group.internal.id
  description       = "Any outbound traffic"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
}
