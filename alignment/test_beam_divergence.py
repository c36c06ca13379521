"""alignment.divergence_step on synthetic logits (numpy only, fast): the traced search reproduces
the spec's reference, and a parting is found at the right step with its tokens and margin."""
import numpy as np

from alignment.divergence_step import beam_divergence, rule_violations, summarize, traced_search
from shared.decode.beam_spec import BeamSettings, beam_search_reference

V = 40


def logits_fn(seed, bump=None):
    """Deterministic logits per prefix; `bump` = (prefix length, token, amount) raises one
    token's logit after every prefix of that length."""
    def run(prefixes):
        rows = []
        for p in prefixes:
            rng = np.random.default_rng([seed, len(p), *p[-3:]])
            row = rng.normal(size=V).astype(np.float32) * 3
            if bump and len(p) == bump[0]:
                row[bump[1]] += bump[2]
            rows.append(row)
        return np.stack(rows)
    return run


SETTINGS = BeamSettings(beam=3, eval_len=8, length_penalty=0.8, no_repeat_ngram_size=2,
                        eos_token_ids=(7,))


def test_traced_search_reproduces_the_reference():
    for seed in range(5):
        query = [1, 2, 3, 4 + seed]
        spec = traced_search(logits_fn(seed), query, SETTINGS)
        np.testing.assert_array_equal(spec["output"],
                                      beam_search_reference(logits_fn(seed), [query], SETTINGS)[0])
        assert len(spec["steps"]) == SETTINGS.eval_len


def test_parting_step_tokens_and_margin():
    query = [1, 2, 3, 4]
    base = logits_fn(0)
    spec = traced_search(base, query, SETTINGS)
    step = 2
    prefix_len = len(query) + step
    # promote a token that the search did not keep at `step` so it takes the lead there
    kept = {h[-1] for h in spec["steps"][step]["kept"]}
    token = next(t for t in range(V) if t not in kept and t != 7)
    other = logits_fn(0, bump=(prefix_len, token, 30.0))
    found = beam_divergence(query, base, other, SETTINGS)
    assert found["cause"] == "logits" and found["step"] == step and found["jittor_token"] == token
    assert found["margin_torch"] > 0 and found["margin_jittor"] > 0
    tiny = logits_fn(0, bump=(prefix_len, token, 0.0))
    assert beam_divergence(query, base, tiny, SETTINGS) is None
    assert summarize([None, found])["causes"] == {"logits": 1}


def test_implementation_deviation_and_rule_violations():
    query = [1, 2, 3, 4]
    spec = traced_search(logits_fn(0), query, SETTINGS)
    repeated = np.array([5, 6, 5, 6, 0, 0, 0, 0])  # the bigram (5, 6) twice: rule 2b broken
    assert rule_violations(repeated, SETTINGS) == [(3, "2b no-repeat n-gram")]
    found = beam_divergence(query, logits_fn(0), logits_fn(0), SETTINGS, spec["output"], repeated)
    assert found["cause"] == "implementation" and found["backend"] == "jittor"
    assert found["where"].startswith("search steps")
