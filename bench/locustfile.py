"""Load test with locust, for those who prefer it to bench/run.py's wrk.

    locust -f bench/locustfile.py --host http://localhost:3000                 # web UI on :8089
    locust -f bench/locustfile.py --host http://localhost:3000 --headless -u 64 -r 16 -t 60s
"""

from __future__ import annotations

import random

from locust import FastHttpUser, constant, task
from sklearn.datasets import load_breast_cancer

ROWS = load_breast_cancer().data.tolist()


class PredictionUser(FastHttpUser):
    wait_time = constant(0)  # closed loop: each user sends its next request when the last is answered

    @task(10)
    def predict(self):
        self.client.post("/predict", json={"features": random.choice(ROWS)})

    @task(1)
    def predict_batch(self):
        self.client.post("/predict_batch", json={"instances": random.sample(ROWS, 100)})
