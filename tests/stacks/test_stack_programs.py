"""The four stack programs under Pulumi mocks: what they register for each spec, and what they export."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pulumi
import pytest
import yaml
from typer.testing import CliRunner

from devserver.cli.main import app
from devserver.infra.common import OPTIONAL_OUTPUTS, OUTPUT_NAMES
from devserver.loader import load_spec
from devserver.plan import Resolved, resolve
from tests.stacks.harness import (
    EXAMPLES,
    FAKE_AKS_KUBECONFIG,
    FAKE_AMI,
    FAKE_CINDER_VOLUME_ID,
    FAKE_EBS_VOLUME_ID,
    FAKE_IMAGE_ID,
    SPECS,
    StackRun,
    run_stack,
)


def resolved(spec: Path) -> Resolved:
    return resolve(load_spec(spec), str(spec))


def user_data_keys(text: str) -> tuple[str, list[str], str]:
    """(user, its authorized keys, its sudo rule) from cloud-init user-data."""
    assert text.startswith("#cloud-config\n")
    (user,) = yaml.safe_load(text)["users"]
    return user["name"], user["ssh_authorized_keys"], user["sudo"]


def test_outputs_contract_is_identical_on_every_cloud(examples: dict[str, StackRun]) -> None:
    names = {cloud: set(run.outputs) - set(OPTIONAL_OUTPUTS) for cloud, run in examples.items()}
    assert all(found == set(OUTPUT_NAMES) for found in names.values()), names
    for cloud, run in examples.items():
        spec = resolved(EXAMPLES / f"{cloud}.yaml")
        assert run.outputs["ssh_user"] == spec.spec.ssh.admin_user
        assert run.outputs["ssh_port"] == 22
        assert run.outputs["gpu"] == spec.gpu_summary
        assert run.outputs["host"].startswith("203.0.113.")
        assert run.outputs["instance_id"].endswith("-vm-id")
    # Only the AWS example asks for a cluster; its kubeconfig is a secret.
    assert [cloud for cloud, run in examples.items() if "kubeconfig" in run.outputs] == ["aws"]
    assert examples["aws"].secret_outputs == {"kubeconfig"}


def test_data_device_output_is_the_stable_path_the_guest_sees(examples: dict[str, StackRun]) -> None:
    """Every example has disks.data: each stack exports the udev path of that disk on its cloud's guests."""
    assert examples["gce"].outputs["data_device"] == "/dev/disk/by-id/google-data"
    (disk,) = examples["gce"].one("gcp:compute/instance:Instance").inputs["attachedDisks"]
    assert disk["deviceName"] == "data"
    assert examples["azure"].outputs["data_device"] == "/dev/disk/azure/scsi1/lun0"
    (data_disk,) = examples["azure"].one("azure-native:compute:VirtualMachine").inputs["storageProfile"]["dataDisks"]
    assert data_disk["lun"] == 0
    # The NVMe serial of an EBS volume is its ID without the dash; virtio-blk serials are cut to 20 characters.
    assert (
        examples["aws"].outputs["data_device"] == "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0"
    )
    assert examples["aws"].one("aws:ec2/volumeAttachment:VolumeAttachment").inputs["volumeId"] == FAKE_EBS_VOLUME_ID
    assert examples["openstack"].outputs["data_device"] == f"/dev/disk/by-id/virtio-{FAKE_CINDER_VOLUME_ID[:20]}"
    assert examples["openstack"].outputs["data_device"] == "/dev/disk/by-id/virtio-6a1b2c3d-4e5f-4a6b-8"
    assert all("data_device" not in run.secret_outputs for run in examples.values())


def test_no_data_device_output_without_a_data_disk(fixture_runs: dict[str, StackRun]) -> None:
    """The AKS fixture has no disks.data (and neither do the others): no data_device output, nothing to mount."""
    for cloud, run in fixture_runs.items():
        assert "data_device" not in run.outputs, cloud


def test_every_resource_uses_the_provider_configured_from_the_spec(examples: dict[str, StackRun]) -> None:
    for cloud, run in examples.items():
        (component,) = [r for r in run.resources if r.type.startswith("devserver:infra:")]
        (provider,) = [r for r in run.resources if r.type.startswith("pulumi:providers:")]
        others = [r for r in run.resources if r not in (component, provider)]
        assert others, cloud
        for resource in others:
            assert resource.provider is not None, resource.name
            assert resource.provider.endswith(f"::{provider.name}::{provider.name}-id"), resource.name
    assert examples["gce"].one("pulumi:providers:gcp").inputs["project"] == "my-ml-project"
    assert examples["gce"].one("pulumi:providers:gcp").inputs["zone"] == "europe-west4-a"
    assert examples["aws"].one("pulumi:providers:aws").inputs["region"] == "us-east-1"
    azure = examples["azure"].one("pulumi:providers:azure-native").inputs
    assert azure["subscriptionId"] == "00000000-0000-0000-0000-000000000000"
    assert examples["openstack"].one("pulumi:providers:openstack").inputs["cloud"] == "pouta"


def test_gce_n1_with_attached_t4(examples: dict[str, StackRun]) -> None:
    run, plan = examples["gce"], resolved(EXAMPLES / "gce.yaml")
    assert plan.machine is not None
    vm = run.one("gcp:compute/instance:Instance").inputs
    assert vm["machineType"] == plan.machine.type == "n1-standard-8"
    assert vm["guestAccelerators"] == [{"type": "nvidia-tesla-t4", "count": 1}]
    assert vm["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert vm["scheduling"]["provisioningModel"] == "STANDARD"
    assert vm["bootDisk"]["initializeParams"]["size"] == 100
    assert vm["bootDisk"]["initializeParams"]["image"] == plan.image
    assert vm["labels"] == {"team": "ml-platform", "devserver": "ml-dev-gce"}
    data = run.one("gcp:compute/disk:Disk").inputs
    assert data["size"] == 500
    assert vm["attachedDisks"] == [{"source": "ml-dev-gce-data-id", "deviceName": "data"}]
    user, keys, sudo = user_data_keys(vm["metadata"]["user-data"])
    assert (user, keys, sudo) == ("devserver", plan.spec.ssh.public_keys, "ALL=(ALL) NOPASSWD:ALL")
    assert vm["metadata"]["ssh-keys"] == f"devserver:{plan.spec.ssh.public_keys[0]}"
    assert vm["networkInterfaces"][0]["accessConfigs"] == [{"natIp": "203.0.113.10"}]
    assert vm["networkInterfaces"][0]["subnetwork"] == "ml-dev-gce-subnet-id"
    (firewall,) = run.of_type("gcp:compute/firewall:Firewall")
    assert firewall.inputs["sourceRanges"] == ["203.0.113.0/24"]
    assert firewall.inputs["allows"] == [{"protocol": "tcp", "ports": ["22"]}]
    assert firewall.inputs["targetTags"] == vm["tags"]


def test_gce_spot_gpu_machine_type_and_gke_pools(fixture_runs: dict[str, StackRun]) -> None:
    run, plan = fixture_runs["gce"], resolved(SPECS / "gce-gke.yaml")
    vm = run.one("gcp:compute/instance:Instance").inputs
    assert vm["machineType"] == "g2-standard-8"
    assert "guestAccelerators" not in vm  # the L4 comes with the machine type
    assert vm["scheduling"] == {
        "onHostMaintenance": "TERMINATE",
        "automaticRestart": False,
        "preemptible": True,
        "provisioningModel": "SPOT",
        "instanceTerminationAction": "STOP",
    }
    assert vm["bootDisk"]["initializeParams"]["size"] == 200
    assert not run.of_type("gcp:compute/disk:Disk")  # no data volume in this spec
    # The existing network named in the spec; no new VPC.
    assert vm["networkInterfaces"][0]["network"] == "shared-vpc"
    assert not run.of_type("gcp:compute/network:Network")
    user, keys, _ = user_data_keys(vm["metadata"]["user-data"])
    assert user == "mlops"
    assert keys == plan.spec.ssh.public_keys
    assert len(keys) == 2
    # GCE firewalls take one address family each.
    ranges = sorted(tuple(f.inputs["sourceRanges"]) for f in run.of_type("gcp:compute/firewall:Firewall"))
    assert ranges == [("198.51.100.0/24",), ("2001:db8:10::/48",)]

    cluster = run.one("gcp:container/cluster:Cluster").inputs
    assert cluster["minMasterVersion"] == "1.31"
    assert cluster["removeDefaultNodePool"] is True
    assert cluster["masterAuthorizedNetworksConfig"]["cidrBlocks"] == [{"cidrBlock": "198.51.100.0/24"}]
    pools = {p.name: p.inputs for p in run.of_type("gcp:container/nodePool:NodePool")}
    assert set(pools) == {"gke-dev-system", "gke-dev-tfour", "gke-dev-lfour"}
    assert "taints" not in pools["gke-dev-system"]["nodeConfig"]
    tfour = pools["gke-dev-tfour"]
    assert tfour["nodeCount"] == 3
    assert tfour["nodeConfig"]["machineType"] == plan.node_pools[0].machine.type == "n1-standard-16"
    (accelerator,) = tfour["nodeConfig"]["guestAccelerators"]
    assert (accelerator["type"], accelerator["count"]) == ("nvidia-tesla-t4", 2)
    assert accelerator["gpuDriverInstallationConfig"] == {"gpuDriverVersion": "DEFAULT"}
    assert tfour["nodeConfig"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"},
        {"key": "team", "value": "ml", "effect": "PREFER_NO_SCHEDULE"},
    ]
    lfour = pools["gke-dev-lfour"]["nodeConfig"]
    assert lfour["machineType"] == "g2-standard-4"
    assert [(a["type"], a["count"]) for a in lfour["guestAccelerators"]] == [("nvidia-l4", 1)]
    assert lfour["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}]

    assert run.secret_outputs == {"kubeconfig"}
    kubeconfig = json.loads(run.outputs["kubeconfig"])
    assert kubeconfig["clusters"][0]["cluster"] == {"server": "https://192.0.2.1", "certificate-authority-data": "Q0E="}
    assert kubeconfig["users"][0]["user"]["exec"]["command"] == "gke-gcloud-auth-plugin"


def test_azure_a100_vm(examples: dict[str, StackRun]) -> None:
    run, plan = examples["azure"], resolved(EXAMPLES / "azure.yaml")
    assert plan.machine is not None
    assert plan.machine.hyperv_generation == 2
    vm = run.one("azure-native:compute:VirtualMachine").inputs
    assert vm["hardwareProfile"] == {"vmSize": "Standard_NC24ads_A100_v4"}
    assert vm["storageProfile"]["imageReference"] == {
        "publisher": "Canonical",
        "offer": "ubuntu-24_04-lts",
        "sku": "server",
        "version": "latest",
    }
    assert vm["storageProfile"]["osDisk"]["diskSizeGB"] == 100
    assert vm["securityProfile"] == {"encryptionAtHost": True}
    assert "priority" not in vm
    (data_disk,) = vm["storageProfile"]["dataDisks"]
    assert data_disk["createOption"] == "Attach"
    assert data_disk["managedDisk"] == {"id": "ml-dev-azure-data-id"}
    assert run.one("azure-native:compute:Disk").inputs["diskSizeGB"] == 1024
    profile = vm["osProfile"]
    assert profile["adminUsername"] == "devserver"
    assert profile["linuxConfiguration"]["disablePasswordAuthentication"] is True
    assert [k["keyData"] for k in profile["linuxConfiguration"]["ssh"]["publicKeys"]] == plan.spec.ssh.public_keys
    user, keys, _ = user_data_keys(base64.b64decode(profile["customData"]).decode())
    assert (user, keys) == ("devserver", plan.spec.ssh.public_keys)
    (rule,) = run.one("azure-native:network:NetworkSecurityGroup").inputs["securityRules"]
    assert rule["sourceAddressPrefixes"] == ["198.51.100.7/32"]
    assert (rule["direction"], rule["access"], rule["destinationPortRange"]) == ("Inbound", "Allow", "22")
    assert run.one("azure-native:resources:ResourceGroup").inputs["resourceGroupName"] == "ml-devservers"
    assert run.one("azure-native:network:PublicIPAddress").inputs["publicIPAllocationMethod"] == "Static"


def test_azure_spot_trusted_launch_and_aks_pool(fixture_runs: dict[str, StackRun]) -> None:
    run, plan = fixture_runs["azure"], resolved(SPECS / "azure-aks.yaml")
    vm = run.one("azure-native:compute:VirtualMachine").inputs
    assert vm["hardwareProfile"]["vmSize"] == "Standard_NC4as_T4_v3"
    assert vm["securityProfile"] == {
        "encryptionAtHost": True,
        "securityType": "TrustedLaunch",
        "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True},
    }
    assert (vm["priority"], vm["evictionPolicy"], vm["billingProfile"]) == ("Spot", "Deallocate", {"maxPrice": -1})
    assert "dataDisks" not in vm["storageProfile"] or vm["storageProfile"]["dataDisks"] == []
    prefixes = [
        r["sourceAddressPrefixes"] for r in run.one("azure-native:network:NetworkSecurityGroup").inputs["securityRules"]
    ]
    assert prefixes == [["198.51.100.7/32", "203.0.113.0/24"]]
    assert vm["tags"] == {"cost-center": "research", "devserver": "aks-dev"}

    cluster = run.one("azure-native:containerservice:ManagedCluster").inputs
    (system,) = cluster["agentPoolProfiles"]
    assert (system["mode"], system["enableEncryptionAtHost"]) == ("System", True)
    assert cluster["apiServerAccessProfile"]["authorizedIPRanges"] == ["198.51.100.7/32", "203.0.113.0/24"]
    pool = run.one("azure-native:containerservice:AgentPool").inputs
    assert pool["vmSize"] == plan.node_pools[0].machine.type == "Standard_NC64as_T4_v3"
    assert (pool["count"], pool["mode"], pool["agentPoolName"]) == (2, "User", "gpu")
    assert pool["nodeTaints"] == ["nvidia.com/gpu=present:NoSchedule"]
    assert pool["enableEncryptionAtHost"] is True
    assert run.outputs["kubeconfig"] == FAKE_AKS_KUBECONFIG
    assert run.secret_outputs == {"kubeconfig"}


def test_aws_g6_spot_instance_and_eks(examples: dict[str, StackRun]) -> None:
    run, plan = examples["aws"], resolved(EXAMPLES / "aws.yaml")
    vm = run.one("aws:ec2/instance:Instance").inputs
    assert vm["instanceType"] == "g6.2xlarge"
    assert vm["ami"] == FAKE_AMI == run.outputs["image"]
    assert run.call("aws:ssm/getParameter:getParameter").args["name"] == plan.image
    assert vm["metadataOptions"]["httpTokens"] == "required"
    assert vm["rootBlockDevice"]["encrypted"] is True
    assert vm["rootBlockDevice"]["volumeSize"] == 150
    assert vm["instanceMarketOptions"]["marketType"] == "spot"
    user, keys, _ = user_data_keys(vm["userData"])
    assert (user, keys) == ("devserver", plan.spec.ssh.public_keys)
    assert run.one("aws:ec2/keyPair:KeyPair").inputs["publicKey"] == plan.spec.ssh.public_keys[0]
    volume = run.one("aws:ebs/volume:Volume").inputs
    assert (volume["size"], volume["encrypted"], volume["type"]) == (200, True, "gp3")
    assert volume["availabilityZone"] == "us-east-1a"  # the instance's
    attachment = run.one("aws:ec2/volumeAttachment:VolumeAttachment").inputs
    assert (attachment["volumeId"], attachment["instanceId"]) == (FAKE_EBS_VOLUME_ID, "ml-dev-aws-vm-id")
    (ingress,) = run.one("aws:ec2/securityGroup:SecurityGroup").inputs["ingress"]
    assert (ingress["fromPort"], ingress["toPort"], ingress["protocol"]) == (22, 22, "tcp")
    assert ingress["cidrBlocks"] + ingress["ipv6CidrBlocks"] == plan.spec.ssh.allowed_cidrs
    # Default VPC: the first default subnet by ID.
    assert vm["subnetId"] == "subnet-0aaaaaaaaaaaaaaaa"

    cluster = run.one("aws:eks/cluster:Cluster").inputs
    assert cluster["version"] == "1.34"
    assert cluster["vpcConfig"]["publicAccessCidrs"] == ["203.0.113.0/24"]
    assert cluster["vpcConfig"]["endpointPrivateAccess"] is True
    groups = {g.name: g.inputs for g in run.of_type("aws:eks/nodeGroup:NodeGroup")}
    gpu = groups["ml-dev-aws-gpu"]
    assert gpu["amiType"] == "AL2023_x86_64_NVIDIA"
    assert gpu["instanceTypes"] == [plan.node_pools[0].machine.type] == ["g4dn.xlarge"]
    assert gpu["scalingConfig"] == {"desiredSize": 2, "minSize": 2, "maxSize": 2}
    assert gpu["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}]
    assert "taints" not in groups["ml-dev-aws-system"]
    template = run.one("aws:ec2/launchTemplate:LaunchTemplate").inputs
    assert template["metadataOptions"]["httpTokens"] == "required"
    assert template["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"
    assert gpu["launchTemplate"] == {"id": "ml-dev-aws-eks-node-id", "version": "1"}
    roles = {r.name: json.loads(r.inputs["assumeRolePolicy"]) for r in run.of_type("aws:iam/role:Role")}
    assert roles["ml-dev-aws-eks-cluster"]["Statement"][0]["Principal"] == {"Service": "eks.amazonaws.com"}
    assert roles["ml-dev-aws-eks-node"]["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    kubeconfig = json.loads(run.outputs["kubeconfig"])
    assert kubeconfig["users"][0]["user"]["exec"]["args"][:2] == ["eks", "get-token"]


def test_aws_given_subnet_and_ami(fixture_runs: dict[str, StackRun]) -> None:
    run = fixture_runs["aws"]
    vm = run.one("aws:ec2/instance:Instance").inputs
    assert vm["instanceType"] == "g5.xlarge"
    assert vm["ami"] == "ami-0fedcba9876543210" == run.outputs["image"]
    assert vm["subnetId"] == "subnet-0123456789abcdef0"
    assert "instanceMarketOptions" not in vm
    assert run.one("aws:ec2/securityGroup:SecurityGroup").inputs["vpcId"] == "vpc-0aaaaaaaaaaaaaaaa"
    assert [c.token for c in run.calls] == ["aws:ec2/getSubnet:getSubnet"]  # no SSM lookup, no default VPC
    assert not run.of_type("aws:ebs/volume:Volume")
    assert "kubeconfig" not in run.outputs


def test_openstack_p100_server(examples: dict[str, StackRun]) -> None:
    run, plan = examples["openstack"], resolved(EXAMPLES / "openstack.yaml")
    server = run.one("openstack:compute/instance:Instance").inputs
    assert server["flavorName"] == "gpu.1.1gpu"
    (boot,) = server["blockDevices"]
    assert (boot["uuid"], boot["sourceType"], boot["destinationType"], boot["volumeSize"]) == (
        FAKE_IMAGE_ID,
        "image",
        "volume",
        80,
    )
    assert run.call("openstack:images/getImage:getImage").args["name"] == plan.image == "Ubuntu-22.04"
    user, keys, _ = user_data_keys(server["userData"])
    assert (user, keys) == ("devserver", plan.spec.ssh.public_keys)
    assert server["metadata"] == {"devserver": "ml-dev-pouta"}
    assert server["networks"] == [{"port": "ml-dev-pouta-port-id"}]
    rules = [r.inputs for r in run.of_type("openstack:networking/secGroupRule:SecGroupRule")]
    assert [(r["remoteIpPrefix"], r["ethertype"], r["portRangeMin"], r["direction"]) for r in rules] == [
        ("193.166.0.0/16", "IPv4", 22, "ingress")
    ]
    assert run.one("openstack:networking/floatingIp:FloatingIp").inputs["pool"] == "public"
    association = run.one("openstack:networking/floatingIpAssociate:FloatingIpAssociate").inputs
    assert association == {"floatingIp": "203.0.113.13", "portId": "ml-dev-pouta-port-id"}
    assert run.one("openstack:blockstorage/volume:Volume").inputs["size"] == 300
    attach = run.one("openstack:compute/volumeAttach:VolumeAttach").inputs
    assert (attach["instanceId"], attach["volumeId"]) == ("ml-dev-pouta-vm-id", FAKE_CINDER_VOLUME_ID)
    assert run.call("openstack:networking/getNetwork:getNetwork").args["name"] == "project_2001234"
    assert run.one("openstack:networking/port:Port").inputs["networkId"] == "net-0001"


def test_catalog_rejection_stops_before_any_resource_with_the_plan_message() -> None:
    spec = SPECS / "catalog-rejected.yaml"
    run = StackRun([], [])
    with pytest.raises(pulumi.RunError) as raised:
        run_stack("gce", spec, run)
    assert run.resources == []
    assert run.calls == []
    plan = CliRunner().invoke(app, ["plan", str(spec)], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert plan.exit_code == 2
    plan_problems = [line.strip() for line in plan.stderr.splitlines() if line.strip().startswith("✗")]
    stack_problems = [line.strip() for line in str(raised.value).splitlines() if line.strip().startswith("✗")]
    assert len(stack_problems) == 2
    assert stack_problems == plan_problems
    assert str(raised.value).splitlines()[0].endswith("catalog-rejected.yaml: 2 problems")


def test_spec_for_another_cloud_is_refused() -> None:
    run = StackRun([], [])
    with pytest.raises(pulumi.RunError, match=r"cloud.provider is aws, but this is the gce stack"):
        run_stack("gce", EXAMPLES / "aws.yaml", run)
    assert run.resources == []
