"""Regenerate ``convcli/data/cnn_layers.json``: the conv layers of public CNNs.

For each network the file lists every ``torch.nn.Conv2d`` in the order the forward pass
calls it, with its input's spatial size at a 1x3x224x224 input (the batch size is the
benchmark's choice): ``c_in``, ``c_out``, ``kh``, ``kw``, ``stride``, ``padding``,
``dilation`` (pairs as lists), ``groups``, ``h``, ``w``, ``bias`` and ``name`` (the
module's path in the model).

How: the models are torchvision's own definitions, built with random weights (no
download), and a forward hook on every Conv2d records what it is called with. Only the
Python model code is needed, not torchvision's compiled operators (nms and friends: no
classification model uses them). Where ``import torchvision`` works, it is used. Here it
does not: PyPI's torchvision is built against another torch and fails to import beside
the installed CPU torch 2.13 ("operator torchvision::nms does not exist"). Then point
``--torchvision`` at the wheel of the matching release, fetched without its
dependencies::

    pip download torchvision==0.28.0 --no-deps -d /tmp/tv
    python tools/make_cnn_layers.py --torchvision /tmp/tv/torchvision-0.28.0-*.whl

The wheel (or an unpacked folder holding ``torchvision/``) is used without running
``torchvision/__init__.py``, which is what loads the compiled operators:
``torchvision.models`` imports and builds the classification models without them.
The committed file was made that way, with torchvision 0.28.0's models and torch
2.13.0 (CPU); it records both versions. Re-running gives the same file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
import zipfile
from pathlib import Path

NETWORKS = (
    "mobilenet_v3_small",
    "efficientnet_b0",
    "regnet_y_400mf",
    "resnet18",
    "resnet50",
    "convnext_tiny",
    "shufflenet_v2_x1_0",
)
OUT = Path(__file__).resolve().parent.parent / "convcli" / "data" / "cnn_layers.json"


def _torchvision_models(source: str | None):
    """``torchvision.models``: installed, or from a wheel / folder without its ops."""
    if source is None:
        import torchvision
        import torchvision.models as models

        return models, torchvision.__version__
    path = Path(source)
    if path.is_file():
        root = Path(tempfile.mkdtemp(prefix="torchvision-"))
        with zipfile.ZipFile(path) as wheel:
            wheel.extractall(root, [n for n in wheel.namelist() if n.endswith(".py")])
    else:
        root = path
    package = root / "torchvision"
    if not (package / "models").is_dir():
        raise SystemExit(f"{source}: no torchvision/models inside")
    # a package object whose __init__ has not run: submodules import from its path
    stub = types.ModuleType("torchvision")
    stub.__path__ = [str(package)]
    stub.__file__ = str(package / "__init__.py")
    sys.modules["torchvision"] = stub
    import torchvision.models as models

    version = "?"
    version_file = package / "version.py"
    if version_file.is_file():
        scope: dict[str, object] = {}
        exec(version_file.read_text(), scope)  # the wheel's own version.py
        version = str(scope.get("__version__", "?"))
    return models, version


def _layers(model, torch) -> list[dict]:
    names = {m: n for n, m in model.named_modules()}
    found: list[dict] = []

    def hook(module, args, _output):
        x = args[0]
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise SystemExit(f"{names[module]}: padding {module.padding!r} not recorded")
        found.append(
            {
                "name": names[module],
                "c_in": module.in_channels,
                "c_out": module.out_channels,
                "kh": module.kernel_size[0],
                "kw": module.kernel_size[1],
                "stride": list(module.stride),
                "padding": list(module.padding),
                "dilation": list(module.dilation),
                "groups": module.groups,
                "h": int(x.shape[-2]),
                "w": int(x.shape[-1]),
                "bias": module.bias is not None,
            }
        )

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224))
    for h in handles:
        h.remove()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--torchvision", metavar="WHEEL_OR_DIR", help="torchvision wheel or unpacked folder"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--networks",
        default=",".join(NETWORKS),
        help="torchvision model names, comma-separated (default: the shipped seven); "
        "other networks go to another --out, for `convcli bench --suite cnn --layers`",
    )
    args = parser.parse_args(argv)
    names = list(dict.fromkeys(n.strip() for n in args.networks.split(",") if n.strip()))
    if not names:
        parser.error("--networks names no network")
    if tuple(names) != NETWORKS and args.out == OUT:
        # the shipped file is the cnn suite's default and the tests' subject
        parser.error(f"--networks other than the shipped seven need an --out other than {OUT}")
    import torch

    models, tv_version = _torchvision_models(args.torchvision)
    # all names checked before any model is built (a misspelt last one was a traceback
    # after the others had been built); only classification models take a 224^2 image
    known = models.list_models(module=models)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(
            f"--networks: {', '.join(unknown)} not among torchvision {tv_version}'s "
            f"classification models: {', '.join(known)}"
        )
    torch.manual_seed(0)
    networks = {}
    for name in names:
        layers = _layers(getattr(models, name)(weights=None), torch)
        networks[name] = layers
        print(f"{name}: {len(layers)} conv layers", file=sys.stderr)
    body = ",\n".join(
        f'    "{name}": [\n'
        + ",\n".join("      " + json.dumps(layer, separators=(", ", ": ")) for layer in layers)
        + "\n    ]"
        for name, layers in networks.items()
    )
    source = f"torchvision {tv_version} models, torch {torch.__version__}, input 1x3x224x224"
    text = (
        "{\n"
        f'  "source": {json.dumps(source)},\n'
        '  "generator": "tools/make_cnn_layers.py",\n'
        '  "networks": {\n' + body + "\n  }\n}\n"
    )
    json.loads(text)  # well-formed before it is written
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
