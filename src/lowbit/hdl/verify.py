"""Run a unit on test vectors: in MyHDL's simulator, and as converted HDL in
Icarus Verilog and GHDL (VHDL-2008), plus ``verilator --lint-only``.

A vector is a dict: every input port's value, and for every output port the
expected value and a care mask (``{"mag": (expected, mask)}``; bits outside the
mask are not compared). Signed values are written in two's complement.

The HDL test benches read all vectors from one text file (one line per vector,
fixed-width hex tokens: inputs, then expected and mask per output), apply them
(combinational: settle 1 ns; clocked: one rising clock edge), compare and print
``DONE <vectors> <errors>``; the first mismatches are printed before it.

The external tools are optional: :func:`missing_tools` names those of a step
(``ICARUS``, ``GHDL``, ``VERILATOR``) that are not on PATH.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Sequence

from myhdl import block, delay, instance

from lowbit.hdl.units import Port, Unit

#: the programs each step needs (:func:`run_icarus`, :func:`run_ghdl`, :func:`lint_verilator`)
ICARUS = ("iverilog", "vvp")
GHDL = ("ghdl",)
VERILATOR = ("verilator",)


def missing_tools(names: Sequence[str]) -> list[str]:
    """Those of ``names`` that are not on PATH."""
    return [n for n in names if shutil.which(n) is None]


def _word(p: Port) -> int:
    return max(4, (p.width + 3) // 4 * 4)


def _tc(value: int, width: int) -> int:
    return value & ((1 << width) - 1)


# ---------------------------------------------------------------------------
# MyHDL


def simulate(unit: Unit, vectors: Sequence[dict[str, Any]]) -> list[dict[str, int]]:
    """Drive ``vectors`` through the MyHDL model; the outputs, two's complement.

    Elaborated and run in a fresh thread: MyHDL calls ``inspect.stack()`` for every
    instance, which costs time per frame of the caller's stack, and a lot per frame
    without a source file on disk (a pytest-xdist worker's stack has such frames:
    there, block units took 20-70x longer to simulate)."""
    result: list[list[dict[str, int]]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(_simulate(unit, vectors))
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    worker = threading.Thread(target=run, name="myhdl-sim")
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    return result[0]


def _simulate(unit: Unit, vectors: Sequence[dict[str, Any]]) -> list[dict[str, int]]:
    sigs = unit.signals()
    ins = [p for p in unit.ports if not p.out and p.name != "clk"]
    outs = [p for p in unit.ports if p.out]
    got: list[dict[str, int]] = []

    @block
    def bench() -> Any:
        dut = unit.block(**unit.kwargs(sigs))

        @instance
        def drive() -> Any:
            for v in vectors:
                for p in ins:
                    sigs[p.name].next = v[p.name]
                yield delay(1)
                if unit.clocked:
                    sigs["clk"].next = 1
                    yield delay(1)
                    sigs["clk"].next = 0
                    yield delay(1)
                got.append({p.name: _tc(int(sigs[p.name].val), p.width) for p in outs})

        return dut, drive

    tb = bench()
    tb.run_sim(quiet=1)
    tb.quit_sim()
    return got


def mismatches(unit: Unit, vectors: Sequence[dict[str, Any]], got: Sequence[dict[str, int]]) -> list[str]:
    bad = []
    for i, (v, g) in enumerate(zip(vectors, got)):
        for p in unit.ports:
            if p.out:
                want, mask = v[p.name]
                if (g[p.name] ^ _tc(want, p.width)) & mask:
                    bad.append(f"vector {i} {v}: {p.name} = {g[p.name]:#x}, want {_tc(want, p.width):#x} (mask {mask:#x})")
    return bad


# ---------------------------------------------------------------------------
# vector file and test benches


def write_vectors(unit: Unit, vectors: Sequence[dict[str, Any]], path: Path) -> int:
    """One line per vector; every token is ``word`` bits of hex. Returns ``word``."""
    word = max(_word(p) for p in unit.ports)
    digits = word // 4
    lines = []
    for v in vectors:
        toks = []
        for p in unit.ports:
            if p.name == "clk":
                continue
            if p.out:
                want, mask = v[p.name]
                toks += [_tc(want, p.width), mask & ((1 << p.width) - 1)]
            else:
                toks.append(_tc(v[p.name], p.width))
        lines.append(" ".join(f"{t:0{digits}x}" for t in toks))
    path.write_text("\n".join(lines) + "\n")
    return word


#: names the test benches declare; a port of the same name would be shadowed
BENCH_NAMES = frozenset({"mem", "got", "i", "errors", "tb", "f", "l", "din", "want", "mask", "zero", "k", "run", "dut"})


def _check_port_names(unit: Unit) -> None:
    clash = sorted(p.name for p in unit.ports if p.name in BENCH_NAMES)
    if clash:
        raise ValueError(f"{unit.module}: port names {', '.join(clash)} clash with the test bench's own names")


def verilog_testbench(unit: Unit, n: int, word: int, vec_file: str) -> str:
    _check_port_names(unit)
    ports = [p for p in unit.ports if p.name != "clk"]
    fields = sum(2 if p.out else 1 for p in ports)
    decl = [f"reg [{word - 1}:0] mem [0:{n * fields - 1}];", f"reg [{word - 1}:0] got;"]
    for p in unit.ports:
        kind = "wire" if p.out else "reg"
        decl.append(f"{kind} [{p.width - 1}:0] {p.name};")
    conn = ", ".join(f".{p.name}({p.name})" for p in unit.ports)
    apply, check, k = [], [], 0
    for p in ports:
        if p.out:
            check.append(
                f"    got = 0;\n    got[{p.width - 1}:0] = {p.name};\n"
                f"    if (((got ^ mem[i*{fields}+{k}]) & mem[i*{fields}+{k + 1}]) != 0) begin\n"
                f"      errors = errors + 1;\n"
                f'      if (errors <= 5) $display("MISMATCH %0d {p.name} got %h want %h", i, {p.name}, mem[i*{fields}+{k}]);\n'
                f"    end"
            )
            k += 2
        else:
            apply.append(f"    {p.name} = mem[i*{fields}+{k}];")
            k += 1
    step = "    #1;\n    clk = 1;\n    #1;\n    clk = 0;\n    #1;" if unit.clocked else "    #1;"
    init = "  clk = 0;\n" if unit.clocked else ""
    return f"""`timescale 1ns/1ps
module tb;
{chr(10).join(decl)}
integer i, errors;
{unit.module} dut ({conn});
initial begin
{init}  $readmemh("{vec_file}", mem);
  errors = 0;
  for (i = 0; i < {n}; i = i + 1) begin
{chr(10).join(apply)}
{step}
{chr(10).join(check)}
  end
  $display("DONE %0d %0d", {n}, errors);
  $finish;
end
endmodule
"""


def _vhdl_type(p: Port) -> str:
    if p.width == 1 and not p.signed:
        return "std_logic"
    return f"{'signed' if p.signed else 'unsigned'}({p.width - 1} downto 0)"


def vhdl_testbench(unit: Unit, word: int, vec_file: str) -> str:
    _check_port_names(unit)
    decl = [f"  signal {p.name} : {_vhdl_type(p)};" for p in unit.ports]
    conn = ", ".join(f"{p.name} => {p.name}" for p in unit.ports)
    body = []
    for p in unit.ports:
        if p.name == "clk":
            continue
        if p.out:
            val = f"(0 => {p.name})" if _vhdl_type(p) == "std_logic" else f"std_logic_vector({p.name})"
            body += [
                "      hread(l, want); hread(l, mask);",
                f"      got := (others => '0'); got({p.width - 1} downto 0) := {val};",
                "      if ((got xor want) and mask) /= zero then",
                "        errors := errors + 1;",
                f'        if errors <= 5 then report "MISMATCH " & integer\'image(k) & " {p.name} got " & to_hstring(got) & " want " & to_hstring(want); end if;',
                "      end if;",
            ]
        else:
            body.append("      hread(l, din);")
            if _vhdl_type(p) == "std_logic":
                body.append(f"      {p.name} <= din(0);")
            else:
                body.append(f"      {p.name} <= {'signed' if p.signed else 'unsigned'}(din({p.width - 1} downto 0));")
    # inputs are read first, then the clock edge, then the outputs are checked
    first_out = next(i for i, line in enumerate(body) if line.startswith("      hread(l, want)"))
    step = ["      wait for 1 ns;"]
    if unit.clocked:
        step += ["      clk <= '1';", "      wait for 1 ns;", "      clk <= '0';", "      wait for 1 ns;"]
    body = body[:first_out] + step + body[first_out:]
    init = "    clk <= '0';\n" if unit.clocked else ""
    return f"""library ieee;
use ieee.std_logic_1164.all;
use ieee.numeric_std.all;
use std.textio.all;

entity tb is
end entity;

architecture sim of tb is
{chr(10).join(decl)}
begin
  dut : entity work.{unit.module} port map ({conn});
  run : process
    file f : text open read_mode is "{vec_file}";
    variable l : line;
    variable din, want, mask, got : std_logic_vector({word - 1} downto 0);
    constant zero : std_logic_vector({word - 1} downto 0) := (others => '0');
    variable errors, k : integer := 0;
  begin
{init}    while not endfile(f) loop
      readline(f, l);
{chr(10).join(body)}
      k := k + 1;
    end loop;
    report "DONE " & integer'image(k) & " " & integer'image(errors);
    std.env.finish;
  end process;
end architecture;
"""


def _run(cmd: Sequence[str], cwd: Path) -> str:
    res = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{out[-3000:]}")
    return out


def _done(out: str) -> tuple[int, int, str]:
    m = re.search(r"DONE (\d+) (\d+)", out)
    if m is None:
        raise RuntimeError(f"test bench did not finish:\n{out[-3000:]}")
    return int(m.group(1)), int(m.group(2)), out


def run_icarus(unit: Unit, vectors: Sequence[dict[str, Any]], hdl_dir: Path, work: Path) -> tuple[int, int, str]:
    """(vectors run, mismatches, log) of the converted Verilog under Icarus."""
    work.mkdir(parents=True, exist_ok=True)
    word = write_vectors(unit, vectors, work / "vectors.hex")
    (work / "tb.v").write_text(verilog_testbench(unit, len(vectors), word, "vectors.hex"))
    _run(["iverilog", "-g2012", "-o", "tb.vvp", "tb.v", str(hdl_dir / f"{unit.module}.v")], work)
    return _done(_run(["vvp", "-n", "tb.vvp"], work))


def run_ghdl(unit: Unit, vectors: Sequence[dict[str, Any]], hdl_dir: Path, work: Path) -> tuple[int, int, str]:
    """(vectors run, mismatches, log) of the converted VHDL under GHDL (VHDL-2008)."""
    work.mkdir(parents=True, exist_ok=True)
    word = write_vectors(unit, vectors, work / "vectors.hex")
    (work / "tb.vhd").write_text(vhdl_testbench(unit, word, "vectors.hex"))
    files = [str(hdl_dir / "pck_myhdl_011.vhd"), str(hdl_dir / f"{unit.module}.vhd"), "tb.vhd"]
    _run(["ghdl", "-a", "--std=08", *files], work)
    _run(["ghdl", "-e", "--std=08", "tb"], work)
    return _done(_run(["ghdl", "-r", "--std=08", "tb"], work))


def lint_verilator(unit: Unit, hdl_dir: Path) -> str:
    """``verilator --lint-only -Wall -Wno-WIDTH``; raises with the log when it complains."""
    return _run(["verilator", "--lint-only", "-Wall", "-Wno-WIDTH", "--top-module", unit.module,
                 str(hdl_dir / f"{unit.module}.v")], hdl_dir)
