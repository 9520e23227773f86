"""The package's shape: no import circles between its modules (counting imports inside
functions too), and no `--flag` text outside the command-line package: the library speaks of
settings and parameters, `nac_tf.cli` turns them into flags."""
import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "nac_tf")


def _modules():
    """{module name: path} of every module of the package."""
    modules = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
    return modules


def import_graph(modules):
    """{module: set of package modules it imports}, at any depth of its code. `from a import
    b` counts as importing module a.b when that is a module, else a."""
    graph = {}
    for name, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph):
    """One import circle as a list of modules (first repeated at the end), or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def test_cycle_finder_finds_a_planted_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles():
    graph = import_graph(_modules())
    # The graph is real: the trainer reaches the data, methods and run directory modules.
    assert {"nac_tf.run_directory", "nac_tf.data.catalog",
            "nac_tf.methods.from_config"} <= graph["nac_tf.training"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_library_modules_speak_of_settings_not_flags():
    # "--name", and "--{name}" in f-strings.
    flag = re.compile(r"(?<![\w-])--(\{|[a-z][a-z_]+)")
    offenders = []
    for name, path in _modules().items():
        if name == "nac_tf.cli" or name.startswith("nac_tf.cli."):
            continue
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if flag.search(line):
                    offenders.append(f"{os.path.relpath(path, REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# The longest module the package may hold: beyond it a module holds several families.
MAX_MODULE_LINES = 500


def test_no_module_holds_more_than_one_family_of_code():
    long_modules = []
    for name, path in _modules().items():
        with open(path) as f:
            lines = sum(1 for _ in f)
        if lines > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {lines} lines")
    assert not long_modules, "\n".join(long_modules)


def test_readme_layout_table_names_every_module_and_package():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    table = readme[readme.index("## What is implemented, and where"):]
    # Each top-level module and subpackage, by its path; a package's modules may be named
    # inside its row.
    missing = [entry for entry in sorted(os.listdir(PACKAGE))
               if not entry.startswith(("_", ".")) and (entry.endswith(".py") or os.path.isdir(
                   os.path.join(PACKAGE, entry)))
               and f"nac_tf/{entry}{'/' if not entry.endswith('.py') else ''}" not in table]
    assert not missing, f"README's layout table lacks {missing}"
