# Every input is checked here, before anything is planned: a bad value stops `terraform plan`
# with one sentence naming the variable. tests/deploy/test_terraform.py evaluates each
# condition on good and bad values.

variable "region" {
  description = "AWS region, e.g. eu-central-1."
  type        = string
  default     = "eu-central-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as eu-central-1."
  }
}

variable "availability_zone" {
  description = "Availability zone of the subnet (all hosts); empty lets AWS choose."
  type        = string
  default     = ""

  validation {
    condition     = var.availability_zone == "" || can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9][a-z]$", var.availability_zone))
    error_message = "availability_zone must be empty or a zone name such as eu-central-1a."
  }
}

variable "name" {
  description = "Prefix of every resource name and of the hosts' inventory names."
  type        = string
  default     = "webchat"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,23}$", var.name))
    error_message = "name must be 1 to 24 lower-case letters, digits or dashes, starting with a letter."
  }
}

variable "admin_cidr" {
  description = "The only addresses allowed to reach SSH (22) on the hosts, e.g. 203.0.113.7/32."
  type        = string

  validation {
    # IPv4 (the rule's cidr_ipv4), a network address (no host bits: the provider refuses them).
    condition     = can(cidrnetmask(var.admin_cidr)) && try(cidrsubnet(var.admin_cidr, 0, 0) == var.admin_cidr, false) && var.admin_cidr != "0.0.0.0/0"
    error_message = "admin_cidr must be an IPv4 network such as 203.0.113.7/32 (your address, no host bits set), not the whole internet."
  }
}

variable "ssh_public_key" {
  description = "OpenSSH public key installed for the admin user on every host (Ansible logs in with it)."
  type        = string

  validation {
    condition     = can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+={0,3}( .*)?$", trimspace(var.ssh_public_key)))
    error_message = "ssh_public_key must be one OpenSSH public key line (ssh-ed25519, ssh-rsa or ecdsa-sha2-*), e.g. the contents of ~/.ssh/id_ed25519.pub."
  }
}

variable "vpc_cidr" {
  description = "Private network of the hosts; the subnet is its first /24."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = try(cidrsubnet(var.vpc_cidr, 0, 0) == var.vpc_cidr, false) && can(regex("^(10\\.|172\\.(1[6-9]|2[0-9]|3[01])\\.|192\\.168\\.)[0-9.]+/(1[6-9]|20)$", var.vpc_cidr))
    error_message = "vpc_cidr must be a private IPv4 network (in 10/8, 172.16/12 or 192.168/16) of /16 to /20 with no host bits set, e.g. 10.42.0.0/16."
  }
}

variable "web_count" {
  description = "Number of web (application) hosts behind the load balancer."
  type        = number
  default     = 2

  validation {
    condition     = var.web_count >= 1 && var.web_count <= 50 && floor(var.web_count) == var.web_count
    error_message = "web_count must be a whole number from 1 to 50."
  }
}

variable "ami_id" {
  description = "AMI of every host; empty picks the newest official Debian 12 (amd64) image."
  type        = string
  default     = ""

  validation {
    condition     = var.ami_id == "" || can(regex("^ami-([0-9a-f]{8}|[0-9a-f]{17})$", var.ami_id))
    error_message = "ami_id must be empty or an AMI id such as ami-0123456789abcdef0."
  }
}

variable "lb_instance_type" {
  description = "Instance type of the load balancer (Nginx)."
  type        = string
  default     = "t3.small"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.lb_instance_type))
    error_message = "lb_instance_type must be an EC2 instance type such as t3.small."
  }
}

variable "web_instance_type" {
  description = "Instance type of each web host (run `webchat --workers` = its vCPUs)."
  type        = string
  default     = "c6i.large"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.web_instance_type))
    error_message = "web_instance_type must be an EC2 instance type such as c6i.large."
  }
}

variable "redis_instance_type" {
  description = "Instance type of the Redis host (memory holds every room's history)."
  type        = string
  default     = "r6i.large"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.redis_instance_type))
    error_message = "redis_instance_type must be an EC2 instance type such as r6i.large."
  }
}

variable "monitoring_instance_type" {
  description = "Instance type of the monitoring host (Prometheus, Grafana)."
  type        = string
  default     = "t3.medium"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.monitoring_instance_type))
    error_message = "monitoring_instance_type must be an EC2 instance type such as t3.medium."
  }
}

variable "root_volume_gb" {
  description = "Size of each host's encrypted root volume, in GiB."
  type        = number
  default     = 20

  validation {
    condition     = var.root_volume_gb >= 8 && var.root_volume_gb <= 16384 && floor(var.root_volume_gb) == var.root_volume_gb
    error_message = "root_volume_gb must be a whole number of GiB from 8 to 16384."
  }
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}
