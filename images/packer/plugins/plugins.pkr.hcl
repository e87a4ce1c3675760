# Plugin pins for Packer >= 1.7, where the builders are plugins installed by `packer init`. Packer 1.6.6 rejects
# required_plugins, so this file lives outside the template folder: devserver.images.packer copies it next to the
# templates only when the packer it runs is 1.7 or newer.

packer {
  required_plugins {
    qemu = {
      source  = "github.com/hashicorp/qemu"
      version = "~> 1.1"
    }
    ansible = {
      source  = "github.com/hashicorp/ansible"
      version = "~> 1.1"
    }
    googlecompute = {
      source  = "github.com/hashicorp/googlecompute"
      version = "~> 1.1"
    }
    azure = {
      source  = "github.com/hashicorp/azure"
      version = "~> 2.1"
    }
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = "~> 1.3"
    }
    openstack = {
      source  = "github.com/hashicorp/openstack"
      version = "~> 1.1"
    }
  }
}
