"""Is it the optimiser or the step size? text only, tiny demo cache, make demo's model with classifier dropout
0.5 (as the recipes set), 120 epochs, batch 32, seed 123, standardised input; SGD lr sweep."""
import harness as H
d = H.load(H.HERE / "caches/demo")
M = {**H.Setup().model, "classifier_dropout": 0.5}
for name, rec in [("official (SGD m0.9 cosine), lr 5e-3", dict(name="official", momentum=0.9, schedule="cosine", lr=5e-3)),
                  ("official (SGD m0.9 cosine), lr 5e-2", dict(name="official", momentum=0.9, schedule="cosine", lr=5e-2)),
                  ("paper (SGD no momentum, step), lr 5e-2", dict(name="paper", lr=5e-2)),
                  ("AdamW 4e-3 cosine, batch 32, dropout 0.5", dict(name="x", optimizer="adamw", schedule="cosine", lr=4e-3))]:
    res = H.run_setup(d, H.Setup(model=M, recipe=rec, modalities="text", input_norm="standardize"), curves=True,
                      log=H.HERE / "log_sgd.jsonl", label=f"text, std input, 120 ep: {name}")
    print(H.fmt(res), flush=True)
