# The hosts: one load balancer, web_count web hosts, one Redis, one monitoring host, all
# Debian 12 from the same AMI, with IMDSv2 only and an encrypted root volume.

data "aws_ami" "debian" {
  count       = var.ami_id == "" ? 1 : 0
  most_recent = true
  owners      = ["136693071363"] # Debian's own AWS account

  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
}

locals {
  ami_id = var.ami_id != "" ? var.ami_id : data.aws_ami.debian[0].id

  # Every host: SSH from the admin network, and the private network between hosts.
  base_security_groups = [aws_security_group.admin_ssh.id, aws_security_group.internal.id]
}

resource "aws_key_pair" "admin" {
  key_name   = "${var.name}-admin"
  public_key = trimspace(var.ssh_public_key)
}

resource "aws_instance" "lb" {
  ami                    = local.ami_id
  instance_type          = var.lb_instance_type
  subnet_id              = aws_subnet.main.id
  key_name               = aws_key_pair.admin.key_name
  vpc_security_group_ids = concat(local.base_security_groups, [aws_security_group.public_web.id])

  root_block_device {
    volume_size = var.root_volume_gb
    volume_type = "gp3"
    encrypted   = true
  }

  metadata_options {
    http_tokens = "required"
  }

  tags = { Name = "${var.name}-lb", Role = "lb" }
}

# A fixed public address for the load balancer, for the DNS record of the chat's host name.
resource "aws_eip" "lb" {
  domain   = "vpc"
  instance = aws_instance.lb.id

  tags = { Name = "${var.name}-lb" }
}

resource "aws_instance" "web" {
  count = var.web_count

  ami                    = local.ami_id
  instance_type          = var.web_instance_type
  subnet_id              = aws_subnet.main.id
  key_name               = aws_key_pair.admin.key_name
  vpc_security_group_ids = local.base_security_groups

  root_block_device {
    volume_size = var.root_volume_gb
    volume_type = "gp3"
    encrypted   = true
  }

  metadata_options {
    http_tokens = "required"
  }

  tags = { Name = "${var.name}-web-${count.index + 1}", Role = "web" }
}

resource "aws_instance" "redis" {
  ami                    = local.ami_id
  instance_type          = var.redis_instance_type
  subnet_id              = aws_subnet.main.id
  key_name               = aws_key_pair.admin.key_name
  vpc_security_group_ids = local.base_security_groups

  root_block_device {
    volume_size = var.root_volume_gb
    volume_type = "gp3"
    encrypted   = true
  }

  metadata_options {
    http_tokens = "required"
  }

  tags = { Name = "${var.name}-redis", Role = "redis" }
}

resource "aws_instance" "monitoring" {
  ami                    = local.ami_id
  instance_type          = var.monitoring_instance_type
  subnet_id              = aws_subnet.main.id
  key_name               = aws_key_pair.admin.key_name
  vpc_security_group_ids = local.base_security_groups

  root_block_device {
    volume_size = var.root_volume_gb
    volume_type = "gp3"
    encrypted   = true
  }

  metadata_options {
    http_tokens = "required"
  }

  tags = { Name = "${var.name}-monitoring", Role = "monitoring" }
}
