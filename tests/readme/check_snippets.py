#!/usr/bin/python3
"""Compiles every ```cpp block of README.md against an installed kern.

    check_snippets.py README.md BUILD_DIR     installs BUILD_DIR into a temporary prefix,
                                              builds one executable per block with
                                              find_package(kern), exit 0 when all compile
    check_snippets.py --extract README.md OUT writes the generated sources to OUT (to look at)

The convention (for whoever edits the README):

* A block that defines `int main` is a complete program: it is compiled and linked as
  written, nothing added. It must have every #include it needs.
* Any other block is a fragment of a training script. Its #include lines move to the top
  of the file; the rest becomes the body of a function. The file starts with the four
  umbrella headers, which a training script is assumed to have included:
      <kern/kern.hpp> <kern/optim/optim.hpp> <kern/models/models.hpp> <kern/tools/tools.hpp>
  and `namespace nn = kern::nn;` (as in the README's first program). The fragment may use
  these names, declared by the enclosing function (see FRAGMENT below for their types):
      model (std::shared_ptr<nn::Sequential>), x, y, loss (Tensor), params, v
      (std::vector<Tensor>), names (std::vector<std::string>), f, loss_fn (TensorFn),
      width (int64_t), probe (data::Batch)
  A fragment may declare any of these names again (it runs in an inner scope). A fragment
  that needs another name declares it, or becomes a program.
* A block whose first line is `// not compiled` is skipped (use it for pseudo-code, and say
  why in the README next to it).

The README's ```cmake block that calls find_package(kern) must equal
tests/consumer/CMakeLists.txt line for line (comments and blank lines aside): the install
test builds that project against an installed kern.

Each generated file maps its lines back to README.md with #line, so a compiler error names
the README's line. The blocks are linked too (an API declared but never defined fails),
never run.
"""

import os
import re
import subprocess
import sys
import tempfile

UMBRELLAS = ["kern/kern.hpp", "kern/optim/optim.hpp", "kern/models/models.hpp", "kern/tools/tools.hpp"]

FRAGMENT = """\
// README.md lines {first}-{last}: a fragment, compiled inside a function (see
// tests/readme/check_snippets.py for the convention).
{umbrellas}
{includes}
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace nn = kern::nn;

namespace readme {{
using kern::Tensor;
[[maybe_unused]] void snippet(std::shared_ptr<nn::Sequential> model, Tensor x, Tensor y, Tensor loss,
                              std::vector<Tensor> params, std::vector<Tensor> v,
                              std::vector<std::string> names, kern::TensorFn f, kern::TensorFn loss_fn,
                              int64_t width, kern::data::Batch probe) {{
  {{
#line {body_line} "README.md"
{body}
  }}
}}
}}  // namespace readme

int main() {{ return 0; }}  // linked, never run
"""

PROGRAM = """\
// README.md lines {first}-{last}: a complete program, as written.
#line {body_line} "README.md"
{body}
"""

CMAKELISTS = """\
cmake_minimum_required(VERSION 3.25)
project(kern_readme_snippets LANGUAGES CXX)
set(CMAKE_CXX_STANDARD 20)
find_package(kern REQUIRED)
foreach(name {names})
  add_executable(${{name}} ${{name}}.cpp)
  target_link_libraries(${{name}} PRIVATE kern::kern)
endforeach()
"""

INCLUDE = re.compile(r"^\s*#\s*include\b")


def blocks(readme_text):
    """[(first line number of the code, list of code lines)] for every ```cpp block."""
    out, cur, start = [], None, 0
    for n, line in enumerate(readme_text.splitlines(), 1):
        s = line.strip()
        if cur is None and re.fullmatch(r"```\s*(cpp|c\+\+)\s*", s):
            cur, start = [], n + 1
        elif cur is not None and s == "```":
            out.append((start, cur))
            cur = None
        elif cur is not None:
            cur.append(line)
    if cur is not None:
        raise SystemExit(f"README.md:{start - 1}: a ```cpp block is never closed")
    return out


def generate(readme_text):
    """{name: source} for every block that is compiled."""
    sources = {}
    for i, (first, lines) in enumerate(blocks(readme_text)):
        last = first + len(lines) - 1
        if lines and lines[0].strip().startswith("// not compiled"):
            continue
        name = f"readme_l{first}"
        code = "\n".join(lines)
        if re.search(r"\bint\s+main\s*\(", code):
            sources[name] = PROGRAM.format(first=first, last=last, body_line=first, body=code)
            continue
        includes = [l for l in lines if INCLUDE.match(l)]
        # keep the body's line numbers: an #include line becomes an empty line
        body = "\n".join("" if INCLUDE.match(l) else l for l in lines)
        sources[name] = FRAGMENT.format(
            first=first, last=last, umbrellas="\n".join(f"#include <{h}>" for h in UMBRELLAS),
            includes="\n".join(includes), body_line=first, body=body)
    return sources


def code_lines(text):
    return [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]


def check_cmake_block(readme_text):
    """None when the README's find_package(kern) block matches tests/consumer, else why."""
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "consumer", "CMakeLists.txt")) as f:
        want = code_lines(f.read())
    found = re.findall(r"```cmake\n(.*?)```", readme_text, flags=re.S)
    found = [b for b in found if "find_package(kern" in b]
    if not found:
        return "README.md has no ```cmake block with find_package(kern)"
    if code_lines(found[0]) != want:
        return ("README.md's find_package(kern) block differs from tests/consumer/CMakeLists.txt:\n  README: " +
                "\n          ".join(code_lines(found[0])) + "\n  test:   " + "\n          ".join(want))
    return None


def write_project(sources, out):
    os.makedirs(out, exist_ok=True)
    for name, src in sources.items():
        with open(os.path.join(out, name + ".cpp"), "w") as f:
            f.write(src)
    with open(os.path.join(out, "CMakeLists.txt"), "w") as f:
        f.write(CMAKELISTS.format(names=" ".join(sorted(sources))))


def run(cmd, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    return r.returncode, r.stdout


def main():
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "--extract":
        with open(args[1]) as f:
            sources = generate(f.read())
        write_project(sources, args[2])
        print(f"{len(sources)} snippets written to {args[2]}")
        return 0
    if len(args) != 2:
        print(__doc__)
        return 2
    readme, build_dir = args
    with open(readme) as f:
        text = f.read()
    sources = generate(text)
    why = check_cmake_block(text)
    if why:
        print(why)
        return 1
    if not sources:
        print(f"{readme}: no ```cpp blocks found (the extraction is broken, or the README lost its examples)")
        return 1
    env = dict(os.environ)
    env.pop("LD_LIBRARY_PATH", None)
    jobs = env.get("KERN_JOBS", "2")
    with tempfile.TemporaryDirectory() as work:
        prefix, proj, bld = (os.path.join(work, d) for d in ("prefix", "src", "build"))
        rc, out = run(["cmake", "--install", build_dir, "--prefix", prefix], env=env)
        if rc != 0:
            print(out)
            print("cmake --install failed")
            return 1
        write_project(sources, proj)
        rc, out = run(["cmake", "-G", "Unix Makefiles", "-S", proj, "-B", bld, f"-DCMAKE_PREFIX_PATH={prefix}"],
                      env=env)
        if rc != 0:
            print(out)
            print("configuring the snippets project failed")
            return 1
        # -k: report every snippet that does not compile, not just the first
        rc, out = run(["cmake", "--build", bld, "-j", jobs, "--", "-k"], env=env)
        built = [n for n in sorted(sources) if os.path.exists(os.path.join(bld, n))]
        failed = sorted(set(sources) - set(built))
        if rc != 0 or failed:
            errors = [l for l in out.splitlines() if "README.md:" in l or "error" in l or "undefined" in l]
            print("\n".join(errors[:80]))
            print(f"README snippets that do not compile as written: "
                  f"{', '.join('README.md:' + n[len('readme_l'):] for n in failed)}")
            return 1
    print(f"README: all {len(sources)} cpp snippets compile and link against the installed kern "
          f"({', '.join('line ' + n[len('readme_l'):] for n in sorted(sources, key=lambda n: int(n[8:])))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
