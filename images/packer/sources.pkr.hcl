# One source per builder. Each is built alone (`packer build -only=<type>.devserver`); Packer decodes only the
# selected source, so the cloud sources may use arguments of the current plugins (boot_mode, imds_support,
# image_guest_os_features) that Debian's Packer 1.6.6 does not know, while its qemu builder runs this folder as is.

locals {
  # Emulation: multi-threaded TCG with every CPU feature qemu models; KVM: the host's CPU.
  qemu_accel = var.qemu_accel == "kvm" ? "kvm" : "tcg,thread=multi"
  qemu_cpu   = var.qemu_accel == "kvm" ? "host" : "max"
  # The build user goes last, in the same root shell that powers the VM off: once it is deleted it could no
  # longer sudo. Its sudoers drop-ins (the qemu seed's, and cloud-init's on the clouds) go with it.
  remove_build_user = "userdel --force --remove ${var.build_user} && rm -f /etc/sudoers.d/devserver-build /etc/sudoers.d/90-cloud-init-users"
}

source "qemu" "devserver" {
  # Boot the base disk itself: Packer copies it (or overlays it when qemu_use_backing_file) and grows it.
  disk_image       = true
  iso_url          = var.qemu_base_disk
  iso_checksum     = "none"
  use_backing_file = var.qemu_use_backing_file
  format           = "qcow2"
  disk_size        = "${var.disk_size_gb}G"
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  vm_name          = "disk.qcow2"
  output_directory = var.qemu_output_dir
  headless         = true
  cpus             = var.qemu_cpus
  memory           = var.qemu_memory_mb
  # accelerator "none" keeps Packer's "-machine accel=" away, so that "-accel" can ask for multi-threaded TCG.
  accelerator = "none"
  qemuargs    = [["-accel", local.qemu_accel], ["-cpu", local.qemu_cpu]]
  # The NoCloud seed: cloud-init finds a volume labelled cidata and creates the build user with its key.
  cd_files      = var.qemu_seed_files
  cd_label      = "cidata"
  host_port_min = var.qemu_host_port_min
  host_port_max = var.qemu_host_port_max
  boot_wait     = "1s"

  communicator         = "ssh"
  ssh_username         = var.build_user
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = var.ssh_timeout
  shutdown_command     = "sudo sh -c '${local.remove_build_user} && shutdown -P now'"
  shutdown_timeout     = "5m"
}

source "googlecompute" "devserver" {
  project_id              = var.gce_project
  zone                    = var.gce_zone
  machine_type            = var.gce_machine_type
  accelerator_type        = var.gce_accelerator_type
  accelerator_count       = var.gce_accelerator_count
  on_host_maintenance     = "TERMINATE" # GPU VMs cannot live-migrate
  source_image_family     = var.gce_source_image_family
  source_image_project_id = [var.gce_source_image_project]
  disk_size               = var.disk_size_gb
  disk_type               = "pd-balanced"
  image_name              = var.image_name
  image_family            = var.image_family
  image_labels            = var.labels
  labels                  = var.labels
  image_guest_os_features = ["UEFI_COMPATIBLE", "GVNIC", "VIRTIO_SCSI_MULTIQUEUE"]
  ssh_username            = var.build_user
}

source "azure-arm" "devserver" {
  subscription_id = var.azure_subscription_id
  location        = var.azure_location
  vm_size         = var.azure_vm_size
  os_type         = "Linux"
  # The Hyper-V generation of the result follows the source image: a -gen2 SKU gives a V2 managed image.
  image_publisher                   = var.azure_image_publisher
  image_offer                       = var.azure_image_offer
  image_sku                         = var.azure_image_sku
  os_disk_size_gb                   = var.disk_size_gb
  managed_image_name                = var.image_name
  managed_image_resource_group_name = var.azure_resource_group
  azure_tags                        = merge(var.labels, { hyperv_generation = var.azure_hyperv_generation })
  ssh_username                      = var.build_user

  # Publish into a gallery whose image definition (named image_family, created with azure_hyperv_generation)
  # exists already; without a gallery the managed image is the result.
  dynamic "shared_image_gallery_destination" {
    for_each = var.azure_gallery == "" ? [] : [var.azure_gallery]
    content {
      subscription        = var.azure_subscription_id
      resource_group      = var.azure_resource_group
      gallery_name        = shared_image_gallery_destination.value
      image_name          = var.image_family
      image_version       = var.azure_gallery_image_version
      replication_regions = [var.azure_location]
    }
  }
}

source "amazon-ebs" "devserver" {
  region        = var.aws_region
  instance_type = var.aws_instance_type
  subnet_id     = var.aws_subnet_id
  spot_price    = var.aws_spot ? "auto" : ""
  source_ami_filter {
    filters = {
      name                = var.aws_source_ami_name
      architecture        = "x86_64"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [var.aws_source_ami_owner]
    most_recent = true
  }
  ami_name      = var.image_name
  ena_support   = true # every GPU instance type (g4dn, g5, g6, p4d, p5) needs ENA
  sriov_support = true
  boot_mode     = var.aws_boot_mode
  imds_support  = "v2.0" # instances from the AMI default to IMDSv2 only
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  launch_block_device_mappings {
    device_name           = var.aws_root_device
    volume_size           = var.disk_size_gb
    volume_type           = "gp3"
    encrypted             = true
    delete_on_termination = true
  }
  tags         = var.labels
  run_tags     = var.labels
  ssh_username = var.build_user
}

source "openstack" "devserver" {
  cloud               = var.openstack_cloud
  region              = var.openstack_region
  flavor              = var.openstack_flavor
  source_image_name   = var.openstack_source_image
  networks            = var.openstack_network == "" ? [] : [var.openstack_network]
  floating_ip_network = var.openstack_floating_ip_network
  image_name          = var.image_name
  image_disk_format   = "qcow2"
  image_min_disk      = var.disk_size_gb
  image_tags          = [var.image_family]
  metadata            = merge(var.labels, { os_distro = "debian" })
  ssh_username        = var.build_user
}
