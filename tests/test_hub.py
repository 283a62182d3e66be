"""hamt.hub and the export: a saved folder loads in a fresh process four ways (after ``import hamt``; with
trust_remote_code where hamt is not importable; through ``hamt.model``; transformers' ``pipeline``), its code
copies equal the library's sources, and a trainer's ``final/`` carries the tokenizer and a model card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, make_micro_tokens
from hamt import hub

PROMPT = [3, 17, 5, 9, 11, 2]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A micro HAMT with its tokenizer, saved as the trainer saves it; and its logits on PROMPT."""
    from hamt.config import HAMTConfig
    from hamt.tokens import read_meta
    from hamt.model import HAMTForCausalLM
    from hamt.tokenize import load_hf_tokenizer

    root = tmp_path_factory.mktemp("hub")
    tokens = make_micro_tokens(root, seed=4)
    torch.manual_seed(0)
    cfg = HAMTConfig(vocab_size=int(read_meta(tokens)["vocab_size"]), hidden_dim=32, hcm_dim=64, num_layers=2,
                     num_slots=2, num_attention_heads=2, max_position_embeddings=32)
    model = HAMTForCausalLM(cfg).eval()
    path = root / "model"
    model.save_pretrained(path)
    load_hf_tokenizer(tokens).save_pretrained(path)
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT])).logits[0, -1]
    return path, logits


def test_saved_folder_has_auto_map_and_the_code(saved):
    path, _ = saved
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["auto_map"] == hub.AUTO_MAP
    names = {p.name for p in path.glob("*.py")}
    assert {"configuration_hamt.py", "modeling_hamt.py", "hamt_layers.py", "hamt_ops.py", "hamt_ops_chunk.py"} <= names


def _module_of(flat: str) -> Path | None:
    """The library file a flat copy was made from: the one whose dotted module name flattens to ``flat``."""
    for f in sorted((ROOT / "hamt").rglob("*.py")):
        parts = f.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if hub.flat_name(module) == flat:
            return f
    return None


def test_code_copies_equal_the_sources_up_to_the_import_rewrite(saved):
    """Line by line: identical, except ``from hamt.a.b import`` -> ``from .hamt_a_b import`` (so no drift)."""
    path, _ = saved
    copies = sorted(path.glob("*.py"))
    assert len(copies) >= 8
    for copy in copies:
        src = _module_of(copy.stem)
        assert src is not None, f"{copy.name}: no library module of that name"
        a, b = src.read_text().splitlines(), copy.read_text().splitlines()
        assert len(a) == len(b), copy.name
        for x, y in zip(a, b):
            if x != y:
                head, _, rest = x.partition(" import ")
                module = head.strip().removeprefix("from ")
                assert head.lstrip().startswith("from hamt"), (copy.name, x)
                assert y == x.replace(f"from {module} import", f"from .{hub.flat_name(module)} import", 1), (x, y)


def test_every_relative_import_transformers_follows_is_shipped(saved):
    from transformers.dynamic_module_utils import get_relative_import_files

    path, _ = saved
    for root in ("modeling_hamt.py", "configuration_hamt.py"):
        for f in get_relative_import_files(path / root):
            assert Path(f).is_file(), f


_LOAD = r"""
import json, sys, torch
{setup}
out = {{"hamt_importable": True}}
try:
    import hamt  # noqa: F401
except ImportError:
    out["hamt_importable"] = False
{load}
model.eval()
with torch.no_grad():
    out["logits"] = model(torch.tensor([{prompt}])).logits[0, -1].tolist()
out["module"] = type(model).__module__
print(json.dumps(out))
"""

WAYS = {
    "auto_after_import_hamt": ("", "import hamt\nfrom transformers import AutoModelForCausalLM\n"
                               "model = AutoModelForCausalLM.from_pretrained(sys.argv[1])"),
    "trust_remote_code_without_hamt": (
        # hamt is installed editable in the venv and the project is on PYTHONPATH: take both away
        "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in str(getattr(f, '__module__', ''))]\n"
        "import os\nsys.path[:] = [p for p in sys.path if p and '__editable__' not in p and os.path.realpath(p) != {root!r}]",
        "from transformers import AutoModelForCausalLM\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        # saved again from inside the copied code, the folder still loads (the copies copy themselves)
        "import tempfile\nd = tempfile.mkdtemp()\nmodel.save_pretrained(d)\n"
        "out['resaved'] = sorted(f for f in os.listdir(d) if f.endswith('.py'))\n"
        "model = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True)"),
    "hamt_model_direct": ("", "from hamt.model import HAMTForCausalLM\n"
                          "model = HAMTForCausalLM.from_pretrained(sys.argv[1])"),
}


def _run(code: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env,
                         cwd=os.environ["TMPDIR"])
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("way", list(WAYS))
def test_fresh_process_loads_the_same_model(saved, way):
    path, logits = saved
    setup, load = WAYS[way]
    r = _run(_LOAD.format(setup=setup.format(root=str(ROOT)), load=load, prompt=PROMPT), str(path))
    torch.testing.assert_close(torch.tensor(r["logits"]), logits, rtol=1e-4, atol=1e-5)
    if way == "trust_remote_code_without_hamt":
        assert r["hamt_importable"] is False
        assert r["module"].startswith("transformers_modules.") and r["module"].endswith("modeling_hamt")
        assert r["resaved"] == sorted(p.name for p in path.glob("*.py"))
    else:
        assert r["module"] == "hamt.model"


def test_import_hamt_is_light_and_registers_in_any_import_order():
    """``import hamt`` loads neither torch nor transformers; the Auto classes know "hamt" once transformers'
    Auto modules are loaded, whichever transformers module a program imports first."""
    r = _run("import hamt, sys, json\nprint(json.dumps({'heavy': sorted(m for m in ('torch', 'transformers') "
             "if m in sys.modules)}))")
    assert r["heavy"] == []
    check = ("from transformers import AutoConfig, AutoModelForCausalLM\n"
             "from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING\n"
             "cfg = AutoConfig.for_model('hamt')\n"
             "print(json.dumps({'config': type(cfg).__module__, "
             "'model': MODEL_FOR_CAUSAL_LM_MAPPING[type(cfg)].__module__}))")
    for first in ("from transformers import PreTrainedModel", "from transformers import GenerationMixin",
                  "from transformers import pipeline", "import transformers.modeling_utils"):
        r = _run(f"import json\nimport hamt\n{first}\n{check}")
        assert r == {"config": "hamt.config", "model": "hamt.model"}, first


def test_pipeline_text_generation_with_the_saved_tokenizer(saved):
    """transformers' pipeline on the folder alone (model + tokenizer), greedy == the model's own generate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = saved
    code = ("import json, sys\nfrom transformers import pipeline\n"
            "pipe = pipeline('text-generation', model=sys.argv[1], trust_remote_code=True, device='cpu')\n"
            "out = pipe('the queen', max_new_tokens=6, do_sample=False, return_full_text=True)\n"
            "print(json.dumps({'text': out[0]['generated_text']}))")
    text = _run(code, str(path))["text"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = tok("the queen", return_tensors="pt")
    with torch.no_grad():
        ref = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
    assert text == tok.decode(ref[0])
    assert text.startswith("the queen") and len(text) > len("the queen")


# --------------------------------------------------------------------------------------------------
# The trainer's final/: tokenizer, resolved parameters, model card
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A micro run of `hamt train`, as the pipeline makes it."""
    import yaml

    from hamt.params import read_yaml, resolve
    from hamt.train import train

    root = tmp_path_factory.mktemp("trained")
    tokens = make_micro_tokens(root, seed=6)
    params = resolve(read_yaml(ROOT / "params.yaml"), "micro", [
        f"tokenizer.tokens_dir={tokens}", f"train.out_dir={root / 'ckpt'}", f"train.results_dir={root / 'results'}",
        "train.device=cpu", "train.max_steps=4", "train.eval_every=4", "train.ckpt_every=4"])
    summary = train(params, model="hamt")
    return Path(summary["final_dir"]), summary, params, yaml


def test_final_carries_tokenizer_code_params_and_card(trained):
    from transformers import AutoTokenizer

    final, summary, params, yaml = trained
    for f in ("config.json", "model.safetensors", "modeling_hamt.py", "tokenizer.json", "tokenizer_config.json",
              "meta.json", "hamt_params.yaml", "README.md"):
        assert (final / f).is_file(), f
    tok = AutoTokenizer.from_pretrained(final)
    meta = json.loads((final / "meta.json").read_text())
    assert tok.eos_token == meta["eot_token"] and tok.eos_token_id == meta["eot_id"]
    # the saved parameters are this run's, and load as a params file
    from hamt.params import load_params

    again = load_params(final / "hamt_params.yaml")
    assert again.to_dict() == params.to_dict()


def test_model_card_front_matter_and_numbers(trained):
    final, summary, params, yaml = trained
    text = (final / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "transformers" and "custom_code" in front["tags"]
    assert {"perplexity", "bits_per_byte"} <= set(front["metrics"])
    assert f"{summary['n_params']:,}" in text
    assert f"{summary['val_loss']:.4f}" in text and f"{summary['tokens']:,} tokens" in text
    assert "hamt train --params hamt_params.yaml --model hamt" in text
    assert "trust_remote_code=True" in text and "pipeline(" in text and "HAMTForCausalLM.from_pretrained" in text
    assert summary["weights_sha256"] in text


def test_final_folder_generates_through_the_pipeline(trained):
    """The folder alone, in transformers' pipeline with its own tokenizer (no tokens dir, no hamt import); a
    left-padded batch gives what each prompt gives alone (the mask is honoured through the pipeline too)."""
    final, _, _, _ = trained
    code = ("import json, sys\nfrom transformers import pipeline\n"
            "pipe = pipeline('text-generation', model=sys.argv[1], trust_remote_code=True, device='cpu')\n"
            "kw = dict(max_new_tokens=4, do_sample=False)\n"
            "batch = pipe(['the queen', 'a'], batch_size=2, **kw)\n"
            "alone = [pipe(p, **kw) for p in ['the queen', 'a']]\n"
            "print(json.dumps({'batch': [o[0]['generated_text'] for o in batch],"
            " 'alone': [o[0]['generated_text'] for o in alone]}))")
    r = _run(code, str(final))
    assert r["batch"][0].startswith("the queen") and r["batch"][1].startswith("a")
    assert r["batch"] == r["alone"]
