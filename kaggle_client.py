"""Kaggle's kernel API as chain.py uses it, through Kaggle's official client (kagglesdk, which
`pip install kaggle` brings): push a script kernel's folder as a new version, a kernel's newest
version number, a version's status, its output files and log, a download, the weekly GPU quota.

KaggleClient sends every request to the endpoint of KAGGLE_API_ENVIRONMENT: Kaggle's by default,
http://localhost:7777 for TEST, where kaggle_standin.py answers for a rehearsal and the tests. The
kaggle package's own KaggleApi wrapper is not used: importing it authenticates against Kaggle at
once (and prints a page of help without credentials), and it picks its endpoint from its command-line
arguments, not from that variable. Nothing here is imported before a chain needs Kaggle, so --dry-run,
train_part.py and infer.py run without the client.
"""

import datetime
import json
import os
import time


class KaggleError(Exception):
    """What Kaggle refused, or that its client is missing: one sentence."""


class Kaggle:
    """The calls a chain makes, each a method; `connect` makes the client."""

    def __init__(self, client):
        from kagglesdk.kernels.types import kernels_api_service as api
        self.client, self.api = client, api

    @classmethod
    def connect(cls, rehearse):
        try:
            from kagglesdk import KaggleClient
            from kagglesdk.kaggle_env import KaggleEnv
        except ImportError:
            raise KaggleError("chain.py drives Kaggle through its official client, which is not installed: "
                              "pip install kaggle (train_part.py and infer.py do not need it)") from None
        if rehearse:
            return cls(KaggleClient(env=KaggleEnv.TEST, api_token="rehearsal"))
        return cls(KaggleClient(**credentials()))

    def call(self, method, request, retry=True, absent=False):
        """One request. A network failure or a server error is tried again with a growing wait (a laptop
        offline for a while), or with retry=False answered None (the caller cannot tell whether it
        arrived); with absent=True a 404 is None too; any other refusal is one sentence."""
        import requests
        delay = 10.0
        while True:
            try:
                return getattr(self.client.kernels.kernels_api_client, method)(request)
            except requests.HTTPError as e:
                code = e.response.status_code if e.response is not None else None
                if absent and code == 404:
                    return None
                if code is None or code < 500 and code != 429:
                    raise KaggleError(f"Kaggle refused {method} ({code}: {e}); check --kernel and your API "
                                      f"credentials") from None
                problem = f"{code}: {e}"
            except (requests.ConnectionError, requests.Timeout) as e:
                problem = type(e).__name__
            if not retry:
                return None
            print(f"Kaggle did not answer {method} ({problem}); trying again in {delay:.0f} s", flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 600.0)

    def kernel_request(self, cls, kernel, version=None):
        request = cls()
        request.user_name, request.kernel_slug = kernel.split("/")
        if version is not None:
            request.version_label = f"v{version}"
        return request

    def push(self, folder, timeout_seconds):
        """The folder's kernel as a new version, the request `kaggle kernels push` makes; (version, the
        sources Kaggle could not attach), or (None, []) when the push was cut off before Kaggle answered:
        not made again blindly, since it may have arrived (chain.py settles it)."""
        with open(os.path.join(folder, "kernel-metadata.json"), encoding="utf-8") as f:
            meta = json.load(f)
        request = self.api.ApiSaveKernelRequest()
        with open(os.path.join(folder, meta["code_file"]), encoding="utf-8") as f:
            request.text = f.read()
        request.slug, request.new_title = meta["id"], meta["title"]
        request.language, request.kernel_type = meta["language"], meta["kernel_type"]
        request.is_private = meta["is_private"]
        request.enable_gpu, request.enable_tpu = meta["enable_gpu"], meta["enable_tpu"]
        request.enable_internet = meta["enable_internet"]
        request.dataset_data_sources = meta["dataset_sources"]
        request.competition_data_sources = meta["competition_sources"]
        request.kernel_data_sources = meta["kernel_sources"]
        request.model_data_sources = meta["model_sources"]
        request.machine_shape = meta.get("machine_shape")
        request.session_timeout_seconds = timeout_seconds
        response = self.call("save_kernel", request, retry=False)
        if response is None:
            print(f"the push of {meta['id']} was cut off before Kaggle answered; looking up whether it arrived")
            return None, []
        if response.error:
            raise KaggleError(f"Kaggle refused the push of {meta['id']}: {response.error}")
        invalid = (response.invalid_dataset_sources + response.invalid_competition_sources
                   + response.invalid_kernel_sources + response.invalid_model_sources)
        return response.version_number, invalid

    def current_version(self, kernel):
        """The kernel's newest version number; None for a kernel not made yet."""
        response = self.call("get_kernel", self.kernel_request(self.api.ApiGetKernelRequest, kernel), absent=True)
        return None if response is None else response.metadata.current_version_number

    def status(self, kernel, version):
        response = self.call("get_kernel_session_status",
                             self.kernel_request(self.api.ApiGetKernelSessionStatusRequest, kernel, version))
        return response.status.name, response.failure_message or ""

    def output(self, kernel, version):
        """([(file name, download URL)], the log as text) of a version; every page of the listing."""
        files, log, token = [], None, ""
        while True:
            request = self.kernel_request(self.api.ApiListKernelSessionOutputRequest, kernel, version)
            request.page_size, request.page_token = 100, token or None
            response = self.call("list_kernel_session_output", request)
            files += [(f.file_name, f.url) for f in response.files]
            log = response.log if log is None else log
            token = response.next_page_token
            if not token:
                return files, kaggle_log_text(log or "")

    def download(self, url, path):
        """An output file (its listing's signed URL), written whole or not at all."""
        import requests
        try:
            response = requests.get(url, stream=True, timeout=300)
            response.raise_for_status()
            with open(path + ".tmp", "wb") as f:
                for chunk in response.iter_content(1 << 20):
                    f.write(chunk)
        except requests.RequestException as e:
            raise KaggleError(f"the download of {os.path.basename(path)} failed ({e}); the same command tries "
                              f"again") from None
        os.replace(path + ".tmp", path)

    def gpu_quota(self):
        """(GPU hours left this week, when the quota resets (UTC)), or (None, None) if Kaggle gives none."""
        quota = self.call("get_accelerator_quota_statistics", self.api.ApiGetAcceleratorQuotaStatisticsRequest())
        gpu = quota.gpu_quota
        if gpu is None or gpu.total_time_allowed is None:
            return None, None
        used = sum(t.total_seconds() for t in (gpu.time_used, gpu.time_reserved) if t is not None)
        reset = quota.quota_refresh_time  # UTC without a zone; None if Kaggle gives none
        reset = reset.replace(tzinfo=datetime.timezone.utc) if reset is not None else None
        return (gpu.total_time_allowed.total_seconds() - used) / 3600, reset


def credentials():
    """The API token (KAGGLE_API_TOKEN or ~/.kaggle/access_token, which the client reads itself), else the
    older user name and key (KAGGLE_USERNAME + KAGGLE_KEY, or kaggle.json in KAGGLE_CONFIG_DIR or ~/.kaggle)."""
    from kagglesdk.kaggle_env import get_access_token_from_env
    token, _ = get_access_token_from_env()
    if token:
        return {"api_token": token}
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return {"username": os.environ["KAGGLE_USERNAME"], "password": os.environ["KAGGLE_KEY"]}
    path = os.path.join(os.environ.get("KAGGLE_CONFIG_DIR") or os.path.expanduser("~/.kaggle"), "kaggle.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            key = json.load(f)
        return {"username": key["username"], "password": key["key"]}
    raise KaggleError("no Kaggle API credentials: make a token at https://www.kaggle.com/settings (API > Generate New "
                      "Token) and save it as ~/.kaggle/access_token or in KAGGLE_API_TOKEN")


def kaggle_log_text(log):
    """Kaggle gives a version's log as a JSON list of {stream_name, time, data}; plain text passes as is."""
    try:
        entries = json.loads(log)
    except ValueError:
        return log
    if not isinstance(entries, list):
        return log
    return "".join(e.get("data", "") for e in entries if isinstance(e, dict))
