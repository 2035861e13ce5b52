"""Checks a ComfyUI API-format prompt before it is queued, with ComfyUI's error shapes
(`execution.validate_prompt`): unknown node types, missing inputs, links to missing nodes or of the
wrong type, values of the wrong type or out of range, file names not in the server's folders.

    ok, error, outputs, node_errors = validate_prompt(prompt, paths)
"""
from __future__ import annotations

import math
from typing import Any

from loraflow.serve.comfy.nodes import NODES, Input
from loraflow.serve.limits import check_workflow_limits
from loraflow.serve.paths import PathRefused, confine_path

Prompt = dict[str, dict[str, Any]]


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) and isinstance(value[1], int)


def _error(type_: str, message: str, details: str = "", **extra) -> dict:
    return {"type": type_, "message": message, "details": details, "extra_info": extra}


def normalize(prompt: Any) -> Prompt:
    """Node ids as strings, links as [str, int]; raises ValueError on a malformed prompt."""
    if not isinstance(prompt, dict) or not prompt:
        raise ValueError("'prompt' must be a non-empty object of node id -> {class_type, inputs}")
    out: Prompt = {}
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise ValueError(f"node {node_id}: expected {{\"class_type\": str, \"inputs\": {{...}}}}")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            raise ValueError(f"node {node_id}: 'inputs' must be an object")
        fixed = {k: [str(v[0]), v[1]] if is_link(v) else v for k, v in inputs.items()}
        out[str(node_id)] = {**node, "inputs": fixed}
    return out


def validate_prompt(prompt: Any, paths, limits=None) -> tuple[bool, dict | None, list[str], dict]:
    try:
        prompt = normalize(prompt)
    except ValueError as e:
        return False, _error("invalid_prompt", "Invalid prompt", str(e)), [], {}
    if limits is not None:
        over = check_workflow_limits(prompt, limits)
        if over:
            nid, message = over
            node_errors = {nid: {"errors": [_error("value_bigger_than_max", message, nid)], "dependent_outputs": [],
                                 "class_type": prompt[nid]["class_type"]}} if nid else {}
            return False, _error("prompt_too_large", message, f"Node ID '#{nid}'" if nid else ""), [], node_errors
    unknown = {nid: n["class_type"] for nid, n in prompt.items() if n["class_type"] not in NODES}
    if unknown:
        nid, cls = next(iter(unknown.items()))
        supported = ", ".join(NODES)
        node_errors = {i: {"errors": [_error("invalid_prompt", f"Cannot execute because node {c} does not exist.",
                                             f"Node ID '#{i}'; supported node types: {supported}")],
                           "dependent_outputs": [], "class_type": c} for i, c in unknown.items()}
        return False, _error("invalid_prompt", f"Cannot execute because node {cls} does not exist.",
                             f"Node ID '#{nid}'; supported node types: {supported}"), [], node_errors
    cycle = find_cycle(prompt)
    if cycle:
        message = "dependency cycle: " + " -> ".join(cycle)
        errors = {"errors": [_error("dependency_cycle", message, f"Node ID '#{cycle[0]}'")], "dependent_outputs": []}
        return False, _error("dependency_cycle", message), [], {
            nid: {**errors, "class_type": prompt[nid]["class_type"]} for nid in dict.fromkeys(cycle)}
    outputs = [nid for nid, n in prompt.items() if NODES[n["class_type"]].OUTPUT_NODE]
    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs", "add a SaveImage node"), [], {}
    checked: dict[str, list[dict]] = {}
    good, node_errors = [], {}
    for out in outputs:
        needed = topological_order(prompt, [out])
        for nid in needed:
            if nid not in checked:
                checked[nid] = _check_node(prompt, nid, paths)
        bad = [nid for nid in needed if checked[nid]]
        for nid in bad:
            entry = node_errors.setdefault(nid, {"errors": checked[nid], "dependent_outputs": [],
                                                 "class_type": prompt[nid]["class_type"]})
            entry["dependent_outputs"].append(out)
        if not bad:
            good.append(out)
    if not good:
        return False, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation"), [], node_errors
    return True, None, good, node_errors


def _links(prompt: Prompt, nid: str) -> list[str]:
    """The nodes `nid` takes inputs from (links to missing nodes are reported by `_check_link`)."""
    return [v[0] for v in prompt[nid]["inputs"].values() if is_link(v) and v[0] in prompt]


def find_cycle(prompt: Prompt) -> list[str] | None:
    """One dependency cycle as `[a, b, a]`, or None. Iterative depth-first search (three colours), so a
    chain of thousands of nodes needs no recursion."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in prompt:
        if root in state:
            continue
        path, stack = [], [(root, iter(_links(prompt, root)))]
        state[root] = 1
        path.append(root)
        while stack:
            nid, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[nid] = 2
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(_links(prompt, child))))
    return None


def topological_order(prompt: Prompt, outputs: list[str]) -> list[str]:
    """Every node the outputs need, each after the nodes it links to (depth-first, outputs in order,
    without recursion). The prompt must be acyclic (`find_cycle`)."""
    order: list[str] = []
    seen: set[str] = set()
    for out in outputs:
        if out in seen:
            continue
        seen.add(out)
        stack = [(out, iter(_links(prompt, out)))]
        while stack:
            nid, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                order.append(nid)
            elif child not in seen:
                seen.add(child)
                stack.append((child, iter(_links(prompt, child))))
    return order


def _check_node(prompt: Prompt, nid: str, paths) -> list[dict]:
    """The errors of one node's own inputs (its upstream nodes are checked on their own)."""
    node = prompt[nid]
    errors = []
    for name, spec in NODES[node["class_type"]].INPUTS.items():
        value = node["inputs"].get(name)
        if value is None:
            if not spec.optional:
                errors.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
        elif is_link(value):
            errors += _check_link(prompt, name, spec, value)
        else:
            errors += _check_value(name, spec, value, paths, node["inputs"])
    if node["class_type"] == "SaveImage" and isinstance(node["inputs"].get("filename_prefix"), str):
        errors += _check_output_prefix(node["inputs"]["filename_prefix"], paths)
    return errors


def _check_output_prefix(prefix: str, paths) -> list[dict]:
    """SaveImage writes under outputs_dir only, and never into the uploads or the data folder."""
    try:
        target = confine_path(prefix.strip() or "ComfyUI", (paths.outputs,), "filename_prefix")
    except PathRefused as e:
        return [_error("invalid_input_type", str(e), "filename_prefix", input_name="filename_prefix")]
    for folder in (paths.inputs, paths.data):
        base = folder.resolve()
        if target == base or base in target.parents:
            return [_error("invalid_input_type", "filename_prefix may not write into the uploads or data folder",
                           "filename_prefix", input_name="filename_prefix")]
    return []


def _check_link(prompt: Prompt, name: str, spec: Input, link: list) -> list[dict]:
    src, index = link
    if src not in prompt:
        return [_error("bad_linked_input", "Bad linked input, node does not exist", f"{name}: node {src}", input_name=name)]
    outputs = NODES[prompt[src]["class_type"]].OUTPUTS
    if not 0 <= index < len(outputs):
        return [_error("bad_linked_input", "Bad linked input, output index out of range",
                       f"{name}: node {src} has {len(outputs)} outputs", input_name=name)]
    if spec.type in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
        return [_error("bad_linked_input", "Bad linked input, a value was expected",
                       f"{name}: widget inputs take values, not links", input_name=name)]
    if outputs[index] != spec.type:
        return [_error("return_type_mismatch", "Return type mismatch between linked nodes",
                       f"{name}, received_type({outputs[index]}) mismatch input_type({spec.type})",
                       input_name=name, received_type=outputs[index], input_type=spec.type)]
    return []


def _check_value(name: str, spec: Input, value: Any, paths, inputs: dict) -> list[dict]:
    kind = spec.type
    if kind not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
        return [_error("required_input_missing", "Required input is missing",
                       f"{name}: a link to a {kind} output is needed", input_name=name)]
    try:
        if kind == "INT":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            inputs[name] = value = int(value)
        elif kind == "FLOAT":
            if isinstance(value, bool):
                raise ValueError
            inputs[name] = value = float(value)
            if not math.isfinite(value):  # NaN passes every min/max comparison
                raise ValueError
        elif kind == "STRING":
            if not isinstance(value, str):
                raise ValueError
        elif kind == "BOOLEAN" and not isinstance(value, bool):
            raise ValueError
    except (TypeError, ValueError):
        return [_error("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                       f"{name}, {value!r}", input_name=name, received_value=repr(value)[:100])]
    if kind in ("INT", "FLOAT"):
        lo, hi = spec.options.get("min"), spec.options.get("max")
        if lo is not None and value < lo:
            return [_error("value_smaller_than_min", f"Value {value} smaller than min of {lo}", f"{name}",
                           input_name=name, received_value=value)]
        if hi is not None and value > hi:
            return [_error("value_bigger_than_max", f"Value {value} bigger than max of {hi}", f"{name}",
                           input_name=name, received_value=value)]
    if kind == "COMBO":
        choices = spec.choices(paths) if callable(spec.choices) else list(spec.choices)
        if value not in choices:
            shown = ", ".join(map(str, choices[:20])) + (" ..." if len(choices) > 20 else "")
            return [_error("value_not_in_list", "Value not in list", f"{name}: '{str(value)[:200]}' not in [{shown}]",
                           input_name=name, received_value=str(value)[:200])]
    return []


def check_widget_values(prompt: Prompt) -> str | None:
    """The first INT/FLOAT widget value outside its node's range, as one line (None: all fit). Used
    by `workflow export`, so a file ComfyUI would refuse is never written."""
    for nid, node in prompt.items():
        for name, spec in NODES[node["class_type"]].INPUTS.items():
            value = node["inputs"].get(name)
            if spec.type in ("INT", "FLOAT") and value is not None and not is_link(value):
                errors = _check_value(name, spec, value, None, dict(node["inputs"]))
                step = spec.options.get("step", 1)
                if not errors and spec.type == "INT" and step > 1 and value % step:
                    return f"{node['class_type']} {name} = {value}: must be a multiple of {step}"
                if errors:
                    return f"{node['class_type']} {name} = {value!r}: {errors[0]['message']}"
    return None
