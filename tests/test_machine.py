"""``manntk.fast.machine``: the fields of /proc/cpuinfo."""

from __future__ import annotations

from manntk.fast import machine


def test_cpu_info_reads_the_first_cpus_field_and_says_none_when_it_cannot(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Xeon: the first\nflags\t\t: fpu sse avx512f\n\n"
        "processor\t: 1\nmodel name\t: the second\nflags\t\t: fpu\n"
    )
    monkeypatch.setattr(machine, "CPUINFO", cpuinfo)
    assert machine.cpu_info("model name") == "Xeon: the first"  # a colon in the value stays
    assert machine.cpu_info("flags") == "fpu sse avx512f"
    assert machine.cpu_info("microcode") is None
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "missing")
    assert machine.cpu_info("flags") is None


def test_cpu_identity_names_vendor_family_and_model_or_none(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n")
    monkeypatch.setattr(machine, "CPUINFO", cpuinfo)
    assert machine.cpu_identity() == "AuthenticAMD family 26 model 2"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n")
    assert machine.cpu_identity() is None
