#!/usr/bin/python3
"""Checks the include lines of kern's library sources against DESIGN.md's layers.

    check_includes.py SOURCE_DIR       exit 0 when clean, 1 with one line per violation
    check_includes.py --self-test      runs the checker on a made-up tree with known faults

The build already makes most wrong includes fail to compile (each CMake target exports only
its own include folder; private headers #error without their box's KERN_BUILDING_<BOX>).
This check covers what a compiler cannot see and names the rule that was broken:

  boxes      framework/ (kern_core), optim/ (kern_optim), models/ (kern_models),
             tools/ (kern_tools; tools/cli/ is the `kern` executable, a front end like
             examples/)
  <kern/..>  may name a public header of the box itself or of a box it links:
             framework -> framework; optim, models -> framework;
             tools -> framework, optim (public headers only); tools/cli -> all
  "..."      (resolved from the including file) must stay inside the box's own folder:
             `"../framework/backend/backend.hpp"` from tools/ is the fault the build split
             was made for
  oneDNN     <dnnl*> only in framework/backend/*.cpp
  Eigen      <Eigen/..>, <unsupported/Eigen/..> only in framework/backend/*.cpp and
             tools/*.cpp (never in a header)
  guards     no source defines KERN_BUILDING_* itself (that would switch the guard off)
"""

import os
import re
import sys
import tempfile

BOXES = ["framework", "optim", "models", "tools"]
# box -> boxes whose public headers (<box>/include/kern/...) it may include
MAY_INCLUDE = {
    "framework": {"framework"},
    "optim": {"framework", "optim"},
    "models": {"framework", "models"},
    "tools": {"framework", "optim", "tools"},
    "tools/cli": {"framework", "optim", "models", "tools"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')
DEFINE_GUARD = re.compile(r"^\s*#\s*define\s+KERN_BUILDING_")


def box_of(rel):
    """'tools/cli/main.cpp' -> 'tools/cli', 'optim/adam.cpp' -> 'optim', else None."""
    parts = rel.split("/")
    if parts[0] not in BOXES:
        return None
    if parts[0] == "tools" and len(parts) > 2 and parts[1] == "cli":
        return "tools/cli"
    return parts[0]


def owner_of_public(root, header):
    """Which box ships <header> (e.g. 'kern/optim/adam.hpp'), or None."""
    for b in BOXES:
        if os.path.isfile(os.path.join(root, b, "include", header)):
            return b
    return None


def check_file(root, rel):
    box = box_of(rel)
    faults = []
    path = os.path.join(root, rel)
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    for n, line in enumerate(lines, 1):
        where = f"{rel}:{n}"
        if DEFINE_GUARD.match(line):
            faults.append(f"{where}: defines KERN_BUILDING_* (only CMake sets the box guards)")
        m = INCLUDE.match(line)
        if not m:
            continue
        kind, name = m.groups()
        if kind == '"':
            target = os.path.normpath(os.path.join(os.path.dirname(rel), name))
            own = box.split("/")[0] if box != "tools/cli" else "tools/cli"
            # tools/ sources may not reach into tools/cli/ either (the CLI is a front end)
            inside = target == own or target.startswith(own + "/")
            if box == "tools" and target.startswith("tools/cli/"):
                inside, own = False, "tools/ minus tools/cli"
            if not inside:
                faults.append(f'{where}: #include "{name}" reaches {target}, outside {own}/ '
                              f"(use a public <kern/...> header)")
            continue
        if name.startswith("kern/"):
            owner = owner_of_public(root, name)
            if owner is None:
                faults.append(f"{where}: <{name}> is not a public header of any box")
            elif owner not in MAY_INCLUDE[box]:
                faults.append(f"{where}: <{name}> belongs to {owner}/, which {box}/ may not include "
                              f"(DESIGN.md: layers)")
        elif name.startswith("dnnl"):
            if not (rel.startswith("framework/backend/") and rel.endswith(".cpp")):
                faults.append(f"{where}: <{name}>: oneDNN appears only in framework/backend/*.cpp")
        elif name.startswith("Eigen/") or name.startswith("unsupported/Eigen"):
            ok_dir = rel.startswith("framework/backend/") or (box == "tools")
            if not (ok_dir and rel.endswith(".cpp")):
                faults.append(f"{where}: <{name}>: Eigen appears only in framework/backend/*.cpp "
                              f"and tools/*.cpp")
    return faults


def check_tree(root):
    faults = []
    for b in BOXES:
        for dirpath, _, files in os.walk(os.path.join(root, b)):
            for fn in sorted(files):
                if fn.endswith((".cpp", ".hpp", ".h", ".cc")):
                    rel = os.path.relpath(os.path.join(dirpath, fn), root).replace(os.sep, "/")
                    faults += check_file(root, rel)
    return faults


def self_test():
    """The checker must find each planted fault and nothing in the clean files."""
    files = {
        "framework/include/kern/tensor.hpp": "#pragma once\n",
        "framework/backend/backend.hpp": "#pragma once\n",
        "framework/backend/gemm.cpp": '#include <dnnl.h>\n#include <Eigen/Core>\n#include "backend.hpp"\n',
        "optim/include/kern/optim/adam.hpp": "#include <kern/tensor.hpp>\n",
        "models/include/kern/models/convnext.hpp": "#include <kern/tensor.hpp>\n",
        "tools/include/kern/tools/ntk.hpp": "#include <kern/optim/adam.hpp>\n",
        "tools/ok.cpp": '#include <Eigen/Core>\n#include <kern/tools/ntk.hpp>\n#include "ok_internal.hpp"\n',
        "tools/ok_internal.hpp": "#pragma once\n",
        "tools/cli/main.cpp": '#include <kern/models/convnext.hpp>\n#include "commands.hpp"\n',
        "tools/cli/commands.hpp": "#pragma once\n",
        # faults, one per line, each must be reported
        "tools/bad_backend.cpp": '#include "../framework/backend/backend.hpp"\n',
        "tools/bad_models.cpp": "#include <kern/models/convnext.hpp>\n",
        "tools/bad_cli.cpp": '#include "cli/commands.hpp"\n',
        "optim/bad_tools.cpp": "#include <kern/tools/ntk.hpp>\n",
        "models/bad_optim.cpp": '#include "../optim/include/kern/optim/adam.hpp"\n',
        "models/bad_dnnl.cpp": "#include <dnnl.hpp>\n",
        "models/bad_eigen.cpp": "#include <Eigen/Core>\n",
        "tools/bad_eigen.hpp": "#include <Eigen/Core>\n",
        "framework/bad_up.cpp": "#include <kern/optim/adam.hpp>\n",
        "tools/bad_guard.cpp": "#define KERN_BUILDING_FRAMEWORK\n",
        "tools/bad_missing.cpp": "#include <kern/nothing.hpp>\n",
    }
    with tempfile.TemporaryDirectory() as root:
        for rel, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            with open(os.path.join(root, rel), "w") as f:
                f.write(text)
        faults = check_tree(root)
    flagged = {f.split(":")[0] for f in faults}
    want = {rel for rel in files if "/bad_" in rel}
    ok = flagged == want and len(faults) == len(want)
    for f in faults:
        print("  found:", f)
    if not ok:
        print(f"self-test FAILED: missed {sorted(want - flagged)}, wrongly flagged {sorted(flagged - want)}, "
              f"{len(faults)} faults for {len(want)} planted")
        return 1
    print(f"self-test ok: all {len(want)} planted faults found, no false positives")
    return 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    faults = check_tree(sys.argv[1])
    for f in faults:
        print(f)
    if faults:
        print(f"{len(faults)} layering fault(s); see DESIGN.md (layers) and tests/layering/check_includes.py")
        return 1
    print("layering ok: every include follows DESIGN.md's layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
