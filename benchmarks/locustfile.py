"""The load bench_load.py offers: 80% polls of GET /jobs/<id>, 20% small prediction jobs."""

import os
import random

from locust import HttpUser, between, task

IMAGES = os.environ["GROCERY_LOAD_IMAGES"].split(os.pathsep)
# Every accepted job id, one a line: bench_load.py checks each one ended, once.
ACCEPTED = open(os.environ["GROCERY_LOAD_ACCEPTED"], "a", buffering=1)  # noqa: SIM115 (open for the whole run)


class JobsClient(HttpUser):
    wait_time = between(0.05, 0.15)

    def on_start(self):
        self.jobs = []

    @task(1)
    def submit(self):
        body = {"type": "predict", "input": {"paths": [random.choice(IMAGES)]}}
        with self.client.post("/jobs", json=body, name="POST /jobs", catch_response=True) as response:
            if response.status_code == 202:
                self.jobs.append(response.json()["id"])
                ACCEPTED.write(self.jobs[-1] + "\n")

    @task(4)
    def poll(self):
        if self.jobs:
            self.client.get(f"/jobs/{random.choice(self.jobs)}", name="GET /jobs/<id>")
        else:
            self.client.get("/jobs?limit=10", name="GET /jobs")
