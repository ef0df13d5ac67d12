"""A client for `mobula serve` (docs/serve.md) using only the Python standard library.

    import mobula_serve as ms
    svc = ms.ServiceClient("http://127.0.0.1:8480", token)
    tc = svc.create_lora_training_client(rank=8, alpha=16)
    fb = tc.forward_backward(data, "cross_entropy")      # a Future, returned at once
    st = tc.optim_step(lr=1e-3)                          # queued behind it (per-client order)
    print(fb.result()["loss"], st.result()["step"])
    samples = tc.sample([[3, 4, 13]], num_samples=4, max_tokens=4, stop=[2]).result()["samples"]

Every call carries a request id (Idempotency-Key); when the connection fails or the service is
restarting, the call is retried with the SAME id until `retry_s` runs out, so it is applied once and
its result is the one the service journaled.
"""
import json
import time
import urllib.error
import urllib.request
import uuid


class ServiceError(Exception):
    def __init__(self, status, message):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class FutureError(Exception):
    """The call was accepted but failed when it ran (its message says why)."""


class ServiceClient:
    def __init__(self, url, token, retry_s=120.0, timeout_s=60.0):
        self.url = url.rstrip("/")
        self.token = token
        self.retry_s = retry_s
        self.timeout_s = timeout_s

    def request(self, method, path, body=None, request_id=None, auth=True):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = "Bearer " + self.token
        if request_id:
            headers["Idempotency-Key"] = request_id
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        while True:
            req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    return json.loads(r.read() or b"{}")
            except urllib.error.HTTPError as e:
                payload = e.read()
                try:
                    message = json.loads(payload).get("error", payload.decode(errors="replace"))
                except ValueError:
                    message = payload.decode(errors="replace")
                if e.code != 503 or time.monotonic() > deadline:
                    raise ServiceError(e.code, message) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    raise
            time.sleep(delay)  # the service restarts (Slurm requeue, kill -9): same id again
            delay = min(delay * 2, 2.0)

    def submit(self, method, path, body=None):
        rid = str(uuid.uuid4())
        out = self.request(method, path, body or {}, request_id=rid)
        return Future(self, out["future_id"])

    def info(self):
        return self.request("GET", "/v1/info")

    def healthy(self):
        try:
            return self.request("GET", "/v1/healthz", auth=False).get("ok", False)
        except (ServiceError, OSError):
            return False

    def adapters(self):
        return self.request("GET", "/v1/adapters")["adapters"]

    def create_lora_training_client(self, rank=None, alpha=None, seed=None):
        body = {k: v for k, v in (("rank", rank), ("alpha", alpha), ("seed", seed)) if v is not None}
        return TrainingClient(self, self.submit("POST", "/v1/adapters", body).result()["adapter_id"])


class Future:
    def __init__(self, client, future_id):
        self.client = client
        self.future_id = future_id

    def result(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 10.0 if deadline is None else max(0.0, min(10.0, deadline - time.monotonic()))
            out = self.client.request("POST", "/v1/retrieve_future",
                                      {"future_id": self.future_id, "timeout_s": wait})
            if out["state"] == "done":
                return out["result"]
            if out["state"] == "failed":
                raise FutureError(out["error"])
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"future {self.future_id} still pending")


class TrainingClient:
    """One LoRA adapter of this client; calls return Futures and run in submission order."""

    def __init__(self, client, adapter_id):
        self.client = client
        self.adapter_id = adapter_id

    def _op(self, op, body):
        return self.client.submit("POST", f"/v1/adapters/{self.adapter_id}/{op}", body)

    def forward_backward(self, data, loss_fn="cross_entropy", **loss):
        return self._op("forward_backward", {"data": data, "loss": dict(fn=loss_fn, **loss)})

    def forward(self, data):
        return self._op("forward", {"data": data})

    def optim_step(self, lr=1e-4, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.0, grad_clip=1.0):
        return self._op("optim_step", dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                                           grad_clip=grad_clip))

    def sample(self, prompts, num_samples=1, max_tokens=16, temperature=1.0, top_k=0, top_p=1.0, stop=(),
               seed=None):
        body = dict(prompts=prompts, num_samples=num_samples, max_tokens=max_tokens, temperature=temperature,
                    top_k=top_k, top_p=top_p, stop=list(stop))
        if seed is not None:
            body["seed"] = seed
        return self._op("sample", body)

    def save_state(self, name):
        return self._op("save_state", {"name": name})

    def load_state(self, name):
        return self._op("load_state", {"name": name})

    def save_weights_for_sampler(self, name):
        return self._op("save_weights_for_sampler", {"name": name})

    def delete(self):
        return self.client.submit("DELETE", f"/v1/adapters/{self.adapter_id}")


def datum(prompt, completion, logprobs=None, advantage=0.0):
    """The datum that trains `completion` after `prompt` (token ids): inputs seq[:-1], targets seq[1:],
    weight 1 on the completion's positions; with `logprobs` (one per completion token, the sampler's)
    also logprobs_old and the advantage per position (importance_sampling / ppo)."""
    seq = list(prompt) + list(completion)
    n = len(seq) - 1
    first = len(prompt) - 1
    d = {"tokens": seq[:-1], "target_tokens": seq[1:], "weights": [1.0 if t >= first else 0.0 for t in range(n)]}
    if logprobs is not None:
        d["logprobs_old"] = [0.0] * first + list(logprobs)
        d["advantages"] = [0.0] * first + [advantage] * len(completion)
    return d
