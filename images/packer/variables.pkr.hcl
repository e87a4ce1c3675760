# Inputs of the devserver image templates. devserver.images.packer.render_vars() derives every value from the spec;
# the defaults only serve `packer validate` and a person running Packer by hand. They build the built-in spec's OS
# (Debian 12) from each cloud's stock image: tests/unit/test_pins_agree.py checks them against render_vars().

# Every source.

variable "image_name" {
  type        = string
  description = "Name of the image this build produces (the spec's name plus the inputs hash)."
  default     = "devserver-image"
  validation {
    condition     = length(var.image_name) <= 63 && trim(var.image_name, "abcdefghijklmnopqrstuvwxyz0123456789-") == "" && trim(substr(var.image_name, 0, 1), "abcdefghijklmnopqrstuvwxyz") == ""
    error_message = "The image_name value must be lowercase letters, digits and '-', starting with a letter (at most 63)."
  }
}

variable "image_family" {
  type        = string
  description = "Image family (GCE) / gallery image definition (Azure): the spec's name."
  default     = "devserver"
  validation {
    condition     = length(var.image_family) <= 63 && trim(var.image_family, "abcdefghijklmnopqrstuvwxyz0123456789-") == "" && trim(substr(var.image_family, 0, 1), "abcdefghijklmnopqrstuvwxyz") == ""
    error_message = "The image_family value must be lowercase letters, digits and '-', starting with a letter."
  }
}

variable "disk_size_gb" {
  type        = number
  description = "Size of the image's disk in GiB (the spec's disks.boot_gb)."
  default     = 20
  validation {
    condition     = var.disk_size_gb >= 4 && var.disk_size_gb <= 4096 && floor(var.disk_size_gb) == var.disk_size_gb
    error_message = "The disk_size_gb value must be a whole number of GiB between 4 and 4096."
  }
}

variable "labels" {
  type        = map(string)
  description = "Labels / tags on the image and the build VM (the spec's labels plus devserver's own)."
  default     = {}
}

variable "build_user" {
  type        = string
  description = "The throwaway user Packer logs in as; removed from the image before it is captured."
  default     = "packer"
  validation {
    condition     = length(var.build_user) <= 32 && trim(var.build_user, "abcdefghijklmnopqrstuvwxyz0123456789_-") == "" && trim(substr(var.build_user, 0, 1), "abcdefghijklmnopqrstuvwxyz_") == "" && var.build_user != "root"
    error_message = "The build_user value must be a lowercase user name other than root."
  }
}

variable "ssh_private_key_file" {
  type        = string
  description = "Private key of build_user (qemu: its public half is in the NoCloud seed). Empty: the builder's own."
  default     = ""
}

# The playbooks Packer runs.

variable "ansible_playbook" {
  type        = string
  description = "The ansible-playbook executable (devserver's own environment)."
  default     = "ansible-playbook"
}

variable "ansible_config" {
  type        = string
  description = "devserver's ansible.cfg (its roles_path points at the roles)."
  default     = "ansible.cfg"
}

variable "playbook_file" {
  type        = string
  description = "The build playbook: imports playbooks/devserver.yml, then playbooks/image.yml."
  default     = "build.yml"
}

variable "extravars_file" {
  type        = string
  description = "JSON file of the role variables for image mode (devserver.ansible_vars.role_vars)."
  default     = "extravars.json"
}

variable "ansible_extra_arguments" {
  type        = list(string)
  description = "More ansible-playbook arguments, e.g. [\"--tags\", \"devserver_base\"] for a reduced run."
  default     = []
}

variable "known_hosts_file" {
  type        = string
  description = "Where Ansible records the build VM's host key (a fresh file per build)."
  default     = "known_hosts"
}

variable "manifest_file" {
  type        = string
  description = "Where the manifest post-processor writes what was built; devserver reads it."
  default     = "packer-manifest.json"
}

# The qemu source.

variable "qemu_base_disk" {
  type        = string
  description = "The base disk image (qcow2) the build VM boots."
  default     = "base.qcow2"
}

variable "qemu_use_backing_file" {
  type        = bool
  description = "true: the output is a copy-on-write overlay on qemu_base_disk; false: a self-contained copy."
  default     = false
}

variable "qemu_accel" {
  type        = string
  description = "kvm where it really works (devserver detects it), else tcg (emulation)."
  default     = "tcg"
  validation {
    condition     = contains(["kvm", "tcg"], var.qemu_accel)
    error_message = "The qemu_accel value must be kvm or tcg."
  }
}

variable "qemu_cpus" {
  type    = number
  default = 2
  validation {
    condition     = var.qemu_cpus >= 1 && var.qemu_cpus <= 64
    error_message = "The qemu_cpus value must be between 1 and 64."
  }
}

variable "qemu_memory_mb" {
  type    = number
  default = 2048
  validation {
    condition     = var.qemu_memory_mb >= 512
    error_message = "The qemu_memory_mb value must be at least 512."
  }
}

variable "qemu_seed_files" {
  type        = list(string)
  description = "NoCloud seed (user-data, meta-data) put on a CD labelled cidata: creates build_user with its key."
  default     = []
}

variable "qemu_output_dir" {
  type        = string
  description = "Folder the qemu builder writes the disk into; must not exist yet."
  default     = "output-qemu"
}

variable "qemu_host_port_min" {
  type    = number
  default = 2222
}

variable "qemu_host_port_max" {
  type    = number
  default = 4444
}

variable "ssh_timeout" {
  type        = string
  description = "How long to wait for the build VM's SSH (emulated boots take minutes)."
  default     = "15m"
}

# The googlecompute source.

variable "gce_project" {
  type    = string
  default = "my-project"
}

variable "gce_zone" {
  type    = string
  default = "europe-west4-a"
  validation {
    condition     = length(split("-", var.gce_zone)) == 3 && trim(var.gce_zone, "abcdefghijklmnopqrstuvwxyz0123456789-") == ""
    error_message = "The gce_zone value must be a zone such as europe-west4-a."
  }
}

variable "gce_machine_type" {
  type    = string
  default = "n1-standard-8"
}

variable "gce_accelerator_type" {
  type        = string
  description = "N1 machines: the attached GPU (full accelerator type URL); empty for GPU-bundled machine types."
  default     = ""
}

variable "gce_accelerator_count" {
  type    = number
  default = 0
}

variable "gce_source_image_family" {
  type    = string
  default = "debian-12"
}

variable "gce_source_image_project" {
  type    = string
  default = "debian-cloud"
}

# The azure-arm source.

variable "azure_subscription_id" {
  type    = string
  default = "00000000-0000-0000-0000-000000000000"
}

variable "azure_location" {
  type    = string
  default = "westeurope"
}

variable "azure_resource_group" {
  type        = string
  description = "Resource group the managed image (and the gallery) live in."
  default     = "devserver"
}

variable "azure_vm_size" {
  type    = string
  default = "Standard_NC4as_T4_v3"
}

variable "azure_image_publisher" {
  type    = string
  default = "Debian"
}

variable "azure_image_offer" {
  type    = string
  default = "debian-12"
}

variable "azure_image_sku" {
  type    = string
  default = "12-gen2"
}

variable "azure_hyperv_generation" {
  type        = string
  description = "V2 for the GPU sizes that need gen2 (follows from the source image's SKU and the gallery definition)."
  default     = "V2"
  validation {
    condition     = contains(["V1", "V2"], var.azure_hyperv_generation)
    error_message = "The azure_hyperv_generation value must be V1 or V2."
  }
}

variable "azure_gallery" {
  type        = string
  description = "Azure Compute Gallery to publish a version into (its image definition is image_family); empty: managed image only."
  default     = ""
}

variable "azure_gallery_image_version" {
  type    = string
  default = "1.0.0"
  validation {
    condition     = length(split(".", var.azure_gallery_image_version)) == 3 && trim(var.azure_gallery_image_version, "0123456789.") == ""
    error_message = "The azure_gallery_image_version value must be MAJOR.MINOR.PATCH."
  }
}

# The amazon-ebs source.

variable "aws_region" {
  type    = string
  default = "us-east-1"
  validation {
    condition     = contains([3, 4], length(split("-", var.aws_region))) && trim(var.aws_region, "abcdefghijklmnopqrstuvwxyz0123456789-") == ""
    error_message = "The aws_region value must be a region such as us-east-1."
  }
}

variable "aws_instance_type" {
  type    = string
  default = "g4dn.xlarge"
}

variable "aws_subnet_id" {
  type    = string
  default = ""
}

variable "aws_source_ami_name" {
  type        = string
  description = "Name pattern of the stock AMI to start from (newest match)."
  default     = "debian-12-amd64-*"
}

variable "aws_source_ami_owner" {
  type        = string
  description = "Account that publishes the stock AMI (Debian: 136693071363, Canonical: 099720109477)."
  default     = "136693071363"
}

variable "aws_boot_mode" {
  type    = string
  default = "uefi-preferred"
  validation {
    condition     = contains(["legacy-bios", "uefi", "uefi-preferred"], var.aws_boot_mode)
    error_message = "The aws_boot_mode value must be legacy-bios, uefi or uefi-preferred."
  }
}

variable "aws_spot" {
  type        = bool
  description = "Build on spot capacity."
  default     = false
}

# The openstack source.

variable "openstack_cloud" {
  type        = string
  description = "clouds.yaml entry (auth comes from there or from OS_* variables)."
  default     = "openstack"
}

variable "openstack_region" {
  type    = string
  default = "regionOne"
}

variable "openstack_flavor" {
  type    = string
  default = "gpu.1.1gpu"
}

variable "openstack_source_image" {
  type        = string
  description = "Glance image name to start from."
  default     = "Debian-12"
}

variable "openstack_network" {
  type    = string
  default = ""
}

variable "openstack_floating_ip_network" {
  type    = string
  default = "public"
}

variable "aws_root_device" {
  type        = string
  description = "Root device name of the source AMI (Debian: /dev/xvda, Ubuntu: /dev/sda1)."
  default     = "/dev/xvda"
}
