# The build: the same playbooks as the chroot builder, then the build user removed, then a manifest devserver reads.

packer {
  # Debian's packer 1.6.6 runs the qemu source; plugins/plugins.pkr.hcl pins the plugins for Packer >= 1.7.
  required_version = ">= 1.6.0"
}

build {
  sources = [
    "source.qemu.devserver",
    "source.googlecompute.devserver",
    "source.azure-arm.devserver",
    "source.amazon-ebs.devserver",
    "source.openstack.devserver",
  ]

  # Fail early, before any playbook runs, if the seed did not give the build user passwordless sudo.
  provisioner "shell" {
    inline = ["sudo -n true"]
  }

  # playbook_file imports playbooks/devserver.yml then playbooks/image.yml (cloud_guest, image_generalize,
  # image_validate), with the role variables devserver maps from the spec for image mode.
  provisioner "ansible" {
    command       = var.ansible_playbook
    playbook_file = var.playbook_file
    user          = var.build_user
    # Packer 1.6.6's SSH proxy offers only ssh-rsa, which current OpenSSH refuses: connect to the VM directly.
    use_proxy = false
    extra_arguments = concat(
      ["--extra-vars", "@${var.extravars_file}", "--private-key", var.ssh_private_key_file],
      var.ansible_extra_arguments,
    )
    ansible_env_vars = [
      "ANSIBLE_CONFIG=${var.ansible_config}",
      "ANSIBLE_SSH_ARGS=-o ControlMaster=auto -o ControlPersist=60s -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=${var.known_hosts_file}",
      "ANSIBLE_FORCE_COLOR=0",
    ]
  }

  # The cloud builders capture the disk after stopping the VM themselves; the qemu source removes the build user
  # in its shutdown_command instead (it powers the VM off over the same SSH session).
  provisioner "shell" {
    except          = ["qemu.devserver"]
    inline          = [local.remove_build_user]
    execute_command = "sudo sh -c '{{ .Vars }} {{ .Path }}'"
    skip_clean      = true
  }

  post-processor "manifest" {
    output     = var.manifest_file
    strip_path = false
    custom_data = {
      image_name   = var.image_name
      image_family = var.image_family
    }
  }
}
