"""64 concurrent clients, good and malformed requests mixed: a bad row never harms its batch-mates."""

from __future__ import annotations

from collections import Counter

from harness.load import run_load


def test_64_clients_with_malformed_requests_mixed_in(server, trained, cancer):
    rows = cancer["X"]
    expected = trained["pipeline"].predict(rows).astype(float)
    requests, truth = [], []
    for i in range(1200):
        row = rows[i % len(rows)]
        if i % 10 == 3:
            requests.append(("/predict", {"features": row[:29].tolist()}))
            truth.append(None)
        elif i % 10 == 7:
            requests.append(("/predict_batch", {"instances": [row.tolist(), row[:5].tolist()]}))
            truth.append(None)
        else:
            requests.append(("/predict", {"features": row.tolist()}))
            truth.append(expected[i % len(rows)])
    results = run_load(server.url, requests, clients=64)
    assert len(results) == len(requests)
    statuses = Counter(r.status for r in results)
    for result, want in zip(results, truth):
        if want is None:
            assert result.status == 400, result
            assert "expected 30 features" in result.body["error"]
        else:
            assert result.status == 200, (result, statuses)
            assert result.body == {"prediction": want}
    assert statuses[200] == 960 and statuses[400] == 240
