"""A sample of catalog facts, each checked against the source cited in data/catalog.yaml; that every entry cites
a source with a date; and the AWS machine types against botocore's own list of EC2 instance types."""

from __future__ import annotations

import datetime
import re

import botocore.session
import pytest

from devserver import catalog

CAT = catalog.load()
TODAY = datetime.date.today().isoformat()


def _cited() -> list[tuple[str, str]]:
    """(entry, source key) for every entry outside ``os`` (whose sources are comments of its own)."""
    cited = [(f"architectures.{k}", a.source) for k, a in CAT.architectures.items()]
    cited.append(("open_module_min_branch", CAT.open_module_min_branch_source))
    cited += [(f"gpus.{k}", g.source) for k, g in CAT.gpus.items()]
    cited += [(f"driver_branches.{k}", v) for k, v in CAT.driver_branch_sources.items()]
    for name, cloud in CAT.clouds.items():
        cited += [(f"clouds.{name}.{part}", key) for part, key in cloud.sources.items()]
        cited += [(f"clouds.{name}.machines.{k}", m.source) for k, m in cloud.machines.items()]
        cited += [(f"clouds.{name}.attachable.{k}", a.source) for k, a in cloud.attachable.items()]
    return cited


def test_every_entry_cites_a_source_with_a_checked_date() -> None:
    cited = _cited()
    assert len(cited) > 150
    for entry, key in cited:
        assert key in CAT.sources, f"{entry} cites {key!r}, which is not in sources"
    for name, cloud in CAT.clouds.items():
        assert {"regions", "images"} <= set(cloud.sources), name
        if cloud.attachable_machine_sizes:
            assert "attachable_machine_sizes" in cloud.sources, name


@pytest.mark.parametrize("key", sorted(CAT.sources))
def test_every_source_says_where_and_when(key: str) -> None:
    source = CAT.sources[key]
    assert source.url or source.how, key
    if source.url:
        assert source.url.startswith("https://"), source.url
    # The day it was read, or the month where only that was recorded; never in the future.
    assert re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", source.checked), source.checked
    assert source.checked <= TODAY
    assert source.says, key


def test_entries_added_in_december_were_checked_that_day() -> None:
    # The H200, L40S, smaller H100, A100 80GB on AWS, RTX PRO 6000, B300 and Grace entries cite sources read on
    # the day they were added, not the older month-only ones.
    for entry, key in _cited():
        if any(gpu in entry for gpu in ("h200", "l40s", "rtx-pro", "b300", "gb200", "gb300", "h100-nvl")):
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", CAT.sources[key].checked), entry


def test_covers_the_gpus_the_issue_names() -> None:
    gce = CAT.clouds["gce"]
    assert set(gce.attachable) == {"t4", "v100", "p100", "p4"}  # [gce-gpus] N1 attachable GPUs
    assert {m.gpu for m in gce.machines.values()} >= {"l4", "a100-40gb", "a100-80gb", "h100-80gb"}
    azure = {m.gpu for m in CAT.clouds["azure"].machines.values()}
    assert azure >= {"t4", "a100-80gb", "h100-80gb", "a10"}
    aws = CAT.clouds["aws"].machines
    assert {name.split(".")[0] for name in aws} >= {"g4dn", "g5", "g6", "p4d", "p5"}
    assert set(CAT.clouds["openstack"].machines) == {"gpu.1.1gpu", "gpu.1.2gpu", "gpu.1.4gpu"}  # [pouta]


@pytest.mark.parametrize(
    ("cloud", "machine", "gpu", "count"),
    [
        ("gce", "g2-standard-24", "l4", 2),  # [gce-gpus] G2 table
        ("gce", "a2-highgpu-1g", "a100-40gb", 1),  # [gce-gpus] A2 Standard
        ("gce", "a2-ultragpu-8g", "a100-80gb", 8),  # [gce-gpus] A2 Ultra
        ("gce", "a3-highgpu-8g", "h100-80gb", 8),  # [gce-gpus] A3 High
        ("azure", "Standard_NC64as_T4_v3", "t4", 4),  # [az-t4]
        ("azure", "Standard_NC24ads_A100_v4", "a100-80gb", 1),  # [az-a100]
        ("azure", "Standard_ND96isr_H100_v5", "h100-80gb", 8),  # [az-h100]
        ("aws", "g4dn.12xlarge", "t4", 4),  # [aws-accel]
        ("aws", "g5.48xlarge", "a10g", 8),  # [aws-accel]
        ("aws", "p4d.24xlarge", "a100-40gb", 8),  # [aws-accel]
        ("aws", "p5.48xlarge", "h100-80gb", 8),  # [aws-accel]
        ("openstack", "gpu.1.4gpu", "p100", 4),  # [pouta]
        ("gce", "a3-ultragpu-8g", "h200", 8),  # [gce-aihc] A3 Ultra
        ("gce", "a3-highgpu-1g", "h100-80gb", 1),  # [gce-aihc] A3 High
        ("gce", "a3-highgpu-4g", "h100-80gb", 4),  # [gce-aihc]
        ("gce", "g4-standard-96", "rtx-pro-6000", 2),  # [gce-g4]
        ("gce", "a4x-highgpu-4g", "gb200", 4),  # [gce-aihc] A4X
        ("azure", "Standard_ND96isr_H200_v5", "h200", 8),  # [az-h200]
        ("azure", "Standard_NC80adis_H100_v5", "h100-nvl", 2),  # [az-nch100]
        ("azure", "Standard_NC320ds_xl_RTXPRO6000BSE_v6", "rtx-pro-6000", 2),  # [az-rtxpro]
        ("azure", "Standard_ND128isr_NDR_GB200_v6", "gb200", 4),  # [az-gb200]
        ("aws", "p5.4xlarge", "h100-80gb", 1),  # [aws-accel-2026-12]
        ("aws", "p4de.24xlarge", "a100-80gb", 8),  # [aws-accel-2026-12]
        ("aws", "p5en.48xlarge", "h200", 8),  # [aws-accel-2026-12]
        ("aws", "g6e.12xlarge", "l40s", 4),  # [aws-accel-2026-12]
        ("aws", "g6e.16xlarge", "l40s", 1),  # [aws-accel-2026-12]
        ("aws", "g7e.12xlarge", "rtx-pro-6000", 2),  # [aws-accel-2026-12]
        ("aws", "p6-b300.48xlarge", "b300", 8),  # [aws-accel-2026-12]
        ("aws", "p6e-gb200.36xlarge", "gb200", 4),  # [aws-accel-2026-12]
    ],
)
def test_machine_facts(cloud: str, machine: str, gpu: str, count: int) -> None:
    facts = CAT.clouds[cloud].machines[machine]
    assert (facts.gpu, facts.count) == (gpu, count)


def test_vcpus_of_the_new_machine_types() -> None:
    gce, azure, aws = (CAT.clouds[c].machines for c in ("gce", "azure", "aws"))
    # [gce-aihc]: A3 High 26/52/104 vCPUs, A3 Ultra 224, A4X 140
    assert [gce[f"a3-highgpu-{n}g"].vcpus for n in (1, 2, 4)] == [26, 52, 104]
    assert (gce["a3-ultragpu-8g"].vcpus, gce["a4x-highgpu-4g"].vcpus) == (224, 140)
    # [az-nch100], [az-h200]
    assert (azure["Standard_NC40ads_H100_v5"].vcpus, azure["Standard_ND96isr_H200_v5"].vcpus) == (40, 96)
    # [aws-accel-2026-12]
    assert (aws["p5.4xlarge"].vcpus, aws["p6e-gb200.36xlarge"].vcpus) == (16, 144)


def test_grace_machines_are_arm64_and_only_they() -> None:
    # [gce-aihc], [az-gb200], [az-gb300], [aws-accel-2026-12]: GB200/GB300 sit on Grace (Arm) CPUs
    for cloud in CAT.clouds.values():
        for machine in cloud.machines.values():
            assert (machine.arch == "arm64") == (machine.gpu in ("gb200", "gb300"))


def test_spot_only_machines() -> None:
    # [gce-aihc]: a3-highgpu-1g/2g/4g are created only as Spot or Flex-start VMs; 8g is sold on demand
    spot_only = {name for name, m in CAT.clouds["gce"].machines.items() if m.spot_only}
    assert spot_only == {"a3-highgpu-1g", "a3-highgpu-2g", "a3-highgpu-4g"}
    assert not any(m.spot_only for c in ("azure", "aws", "openstack") for m in CAT.clouds[c].machines.values())


def test_first_driver_branch_of_the_new_gpus() -> None:
    # [nv-compat-gpus]: the first release whose README lists the GPU
    first = {k: CAT.gpus[k].min_branch for k in ("l40s", "h100-nvl", "h200", "rtx-pro-6000", "b300", "gb200", "gb300")}
    assert first == {
        "l40s": 535,
        "h100-nvl": 535,
        "h200": 550,
        "rtx-pro-6000": 575,
        "b300": 580,
        "gb200": 570,
        "gb300": 580,
    }
    assert CAT.gpu_key("H200") == "h200"
    assert CAT.gpu_key("h100") == "h100-80gb"


def test_gce_attach_limits() -> None:
    # [gce-gpus]: V100 comes in 1/2/4/8 with at most 12 vCPUs per GPU; T4 in 1/2/4
    assert CAT.clouds["gce"].attachable["v100"].max_vcpus == {1: 12, 2: 24, 4: 48, 8: 96}
    assert set(CAT.clouds["gce"].attachable["t4"].max_vcpus) == {1, 2, 4}


def test_nvswitch_machines_need_fabric_manager() -> None:
    # [fm]: HGX 8-GPU boards (A100, H100) use NVSwitch; single-GPU sizes do not
    assert CAT.clouds["aws"].machines["p5.48xlarge"].nvswitch
    assert CAT.clouds["azure"].machines["Standard_ND96isr_H100_v5"].nvswitch
    assert CAT.clouds["gce"].machines["a3-highgpu-8g"].nvswitch
    assert not CAT.clouds["aws"].machines["g6.xlarge"].nvswitch


def test_module_flavours_by_architecture() -> None:
    # [nv-open]: proprietary only up to Volta; open from Turing; Blackwell requires open
    assert CAT.architectures[CAT.gpus["v100"].architecture].open is False
    assert CAT.architectures[CAT.gpus["p100"].architecture].open is False
    assert CAT.architectures[CAT.gpus["t4"].architecture].open is True
    assert CAT.architectures[CAT.gpus["b200"].architecture].proprietary is False
    # [nv-kmod]: Hopper (H100, H200) is Turing-or-newer and not Blackwell: both flavours
    hopper = CAT.architectures[CAT.gpus["h200"].architecture]
    assert (hopper.open, hopper.proprietary) == (True, True)
    for gpu in ("rtx-pro-6000", "b300", "gb200", "gb300"):
        assert CAT.gpus[gpu].architecture == "blackwell"


def test_cuda_per_branch() -> None:
    # [cuda-rn]: CUDA 12.2 needs >= 535.54; 12.8 needs >= 570.26; 11.8 needs >= 520.61
    assert CAT.max_cuda(535) == "12.2"
    assert CAT.max_cuda(570) == "12.8"
    assert CAT.max_cuda(520) == "11.8"
    assert CAT.min_branch_for_cuda("12.8") == 570
    # [cuda-rn-13]: 13.0 >= 580.65.06, 13.1 >= 590.44.01, 13.2 >= 595.45.04, 13.3 >= 610.43.02
    assert [CAT.max_cuda(b) for b in (580, 590, 595, 610)] == ["13.0", "13.1", "13.2", "13.3"]
    assert CAT.min_branch_for_cuda("13.2") == 595
    assert max(CAT.driver_branches) == 610


def test_azure_generations() -> None:
    # [az-a100]/[az-h100]: gen2 only; [az-t4]: gen1 and gen2
    assert CAT.clouds["azure"].machines["Standard_NC24ads_A100_v4"].generations == (2,)
    assert CAT.clouds["azure"].machines["Standard_NC4as_T4_v3"].generations == (1, 2)
    # [az-h200], [az-nch100], [az-rtxpro], [az-gb200], [az-gb300]: generation 2 only
    for name, machine in CAT.clouds["azure"].machines.items():
        if machine.gpu in ("h200", "h100-nvl", "rtx-pro-6000", "gb200", "gb300"):
            assert machine.generations == (2,), name


def test_debian_distro_driver() -> None:
    # [deb-nv]: bookworm ships the 535 series and CUDA 11.8, proprietary modules only
    facts = CAT.os["debian-12"]
    assert facts.distro_driver_branches == (535,)
    assert facts.distro_cuda == "11.8"
    assert facts.distro_open_modules is False


def test_every_machine_names_a_known_gpu() -> None:
    for cloud in CAT.clouds.values():
        for machine in cloud.machines.values():
            assert machine.gpu in CAT.gpus
        for gpu in cloud.attachable:
            assert gpu in CAT.gpus
        assert set(cloud.images) == set(CAT.os)
    for gpu in CAT.gpus.values():
        assert gpu.architecture in CAT.architectures


def _ec2_instance_types() -> set[str]:
    # botocore's EC2 service model ships in the wheel: offline, and as new as the installed botocore.
    model = botocore.session.get_session().get_service_model("ec2")
    return set(model.shape_for("InstanceType").enum)


def test_every_aws_machine_type_is_an_ec2_instance_type(record_property: pytest.RecordProperty) -> None:
    known = _ec2_instance_types()
    ours = set(CAT.clouds["aws"].machines)
    assert ours <= known, sorted(ours - known)
    # For information, not a failure: GPU families (g*/p* followed by a digit) EC2 lists that the catalog lacks.
    families = {t.split(".")[0] for t in known if re.match(r"[gp]\d", t)}
    missing = sorted(families - {t.split(".")[0] for t in ours})
    record_property("ec2_gpu_families_not_in_catalog", ", ".join(missing))
    print(f"EC2 GPU families botocore lists that the catalog lacks: {', '.join(missing) or 'none'}")
