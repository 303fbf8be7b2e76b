"""lm-eval's `local-completions` model against `genloom serve` scores a loglikelihood task and a
generate_until task exactly as lm-eval's own `hf` backend does on the same weights exported with
`genloom convert export` (per-example log-likelihoods within 1e-4). A small local task: no downloads."""

from __future__ import annotations

import json

import pytest
from conftest import tiny

from genloom import api, load
from genloom.text.convert import export_hf

lm_eval = pytest.importorskip("lm_eval")          # the dev extra: lm-eval[api], accelerate
pytest.importorskip("tenacity")
pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")
pytest.importorskip("fastapi")

from test_serve import Server  # noqa: E402

from genloom.serve.app import Limits  # noqa: E402

GPT2 = ["model.position=learned", "model.norm=layernorm", "model.mlp=gelu_tanh", "model.bias=true",
        "model.tie_embeddings=true", "model.qk_norm=false", "train.max_steps=15"]

QUESTIONS = [("So foul and fair a", [" day", " night", " king"], 0),     # context + choice < 32 characters
             ("Fair is foul, and", [" foul", " dark", " gone"], 0),
             ("When shall we", [" three", " meet"], 0),
             ("Double, double", [" toil", " water", " fire"], 0),
             ("Out, damned", [" spot", " dog"], 0)]
PROMPTS = ["MACBETH:\n", "First Witch:\n", "LADY MACBETH:\nOut", "BANQUO:\n"]

YAML = {"loglikelihood": """task: genloom_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
""", "generate": """task: genloom_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
"""}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("lm_eval")
    api.train("shakespeare-char", out=root / "run", overrides=tiny(corpus, *GPT2))
    export_hf(load(root / "run"), root / "hf")          # what `genloom convert export --checkpoint --out` runs
    return root


def _tasks(root):
    folder = root / "tasks"
    folder.mkdir(exist_ok=True)
    rows = {"loglikelihood": [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS],
            "generate": [{"prompt": p, "target": "x"} for p in PROMPTS]}
    for kind, yaml in YAML.items():
        data = folder / f"{kind}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows[kind]))
        (folder / f"{kind}.yaml").write_text(yaml.format(data=data))
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(folder))


def test_lm_eval_local_completions_matches_its_hf_backend(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    hf = exported / "hf"
    handle = load(exported / "run")
    # `convert export` writes tokenizer_config.json (the fast tokenizer's class); lm-eval's hf backend also
    # needs an end-of-text token, which a character model lacks: the test names the newline as one.
    settings = json.loads((hf / "tokenizer_config.json").read_text())
    assert settings["tokenizer_class"] == "PreTrainedTokenizerFast"
    (hf / "tokenizer_config.json").write_text(json.dumps({**settings, "eos_token": "\n"}))
    auto = transformers.AutoTokenizer.from_pretrained(str(hf))
    assert auto("So foul, and fair")["input_ids"] == handle.tokenizer.encode("So foul, and fair")
    from lm_eval import simple_evaluate

    tasks = _tasks(tmp_path)
    server = Server({"m": handle}, Limits(max_prompt_tokens=4096))
    try:
        served = simple_evaluate(
            model="local-completions", tasks=["genloom_choice", "genloom_generate"], task_manager=tasks,
            model_args={"base_url": f"{server.url}/v1/completions", "model": "m", "tokenizer": str(hf),
                        "tokenizer_backend": "huggingface", "tokenized_requests": True, "max_length": 32,
                        "max_retries": 1}, log_samples=True, random_seed=0, numpy_random_seed=0,
            torch_random_seed=0, fewshot_random_seed=0)
    finally:
        server.stop()
    reference = simple_evaluate(
        model="hf", tasks=["genloom_choice", "genloom_generate"], task_manager=tasks,
        model_args={"pretrained": str(hf), "dtype": "float32", "device": "cpu", "max_length": 32},
        log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)

    def loglikelihoods(results):
        return [float(r[0][0]) for s in results["samples"]["genloom_choice"] for r in s["resps"]]

    ours, theirs = loglikelihoods(served), loglikelihoods(reference)
    assert len(ours) == sum(len(c) for _, c, _ in QUESTIONS) and len(ours) == len(theirs)
    worst = max(abs(a - b) for a, b in zip(ours, theirs))
    print(f"lm-eval local-completions vs hf: {len(ours)} log-likelihoods, largest difference {worst:.2e}")
    assert worst < 1e-4, (ours, theirs)
    assert served["results"]["genloom_choice"]["acc,none"] == reference["results"]["genloom_choice"]["acc,none"]
    texts = [[s["resps"][0][0] for s in results["samples"]["genloom_generate"]] for results in (served, reference)]
    assert len(texts[0]) == len(PROMPTS) and texts[0] == texts[1]
