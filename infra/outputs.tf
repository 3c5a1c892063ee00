# What ansible/inventories/terraform/inventory.py reads (`terraform output -json`): the hosts
# by Ansible group, each with its public address (SSH) and private address (traffic between
# hosts), and the user to log in as.

output "hosts" {
  description = "Hosts by Ansible group (lb, web, redis, monitoring): name, public_ip, private_ip."
  value = {
    lb = [{
      name       = aws_instance.lb.tags.Name
      public_ip  = aws_eip.lb.public_ip
      private_ip = aws_instance.lb.private_ip
    }]
    web = [for host in aws_instance.web : {
      name       = host.tags.Name
      public_ip  = host.public_ip
      private_ip = host.private_ip
    }]
    redis = [{
      name       = aws_instance.redis.tags.Name
      public_ip  = aws_instance.redis.public_ip
      private_ip = aws_instance.redis.private_ip
    }]
    monitoring = [{
      name       = aws_instance.monitoring.tags.Name
      public_ip  = aws_instance.monitoring.public_ip
      private_ip = aws_instance.monitoring.private_ip
    }]
  }
}

output "ssh_user" {
  description = "The login user of Debian's cloud images."
  value       = "admin"
}

output "lb_public_ip" {
  description = "Point the chat's DNS name here."
  value       = aws_eip.lb.public_ip
}
