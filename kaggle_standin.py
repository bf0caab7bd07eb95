"""A stand-in of Kaggle's kernel API on 127.0.0.1, for `chain.py --rehearse` and the tests.

Kaggle's official client (kagglesdk) sends every request as a JSON POST to
<endpoint>/api/v1/<service>/<method>; with KAGGLE_API_ENVIRONMENT=TEST (or KaggleEnv.TEST) the
endpoint is http://localhost:7777. This server answers there the requests chain.py makes, in the
shapes the client parses:

    kernels.KernelsApiService/SaveKernel                      push a script: a new version, run at once
    kernels.KernelsApiService/GetKernel                       the kernel's current version number
    kernels.KernelsApiService/GetKernelSessionStatus          QUEUED / RUNNING / COMPLETE / ERROR
    kernels.KernelsApiService/ListKernelSessionOutput         the output files (paged) and the log
    kernels.KernelsApiService/GetAcceleratorQuotaStatistics   the weekly GPU quota
    GET /files/<owner>/<slug>/v<N>/<path>                     an output file (the listing's URLs)

Each pushed version runs as Kaggle runs a script kernel on a fresh machine, in its own folder:

    <root>/<owner>/<slug>/v<N>/
        kaggle_kernel.py   the pushed text, run with no arguments (its STAGE and ARGS)
        pushed.json        the rest of the push (sources, GPU, internet, accelerator, time limit)
        input/<slug>/      each attached notebook's output (its newest complete version), read-only
                           while the version runs; BATON_INPUT_ROOTS points here (Kaggle's /kaggle/input)
        working/           empty at start, the working directory (Kaggle's /kaggle/working); what
                           is in it at the end is the version's output
        tmp/               TMPDIR: a fresh machine's temp folder
        log.txt            stdout and stderr; exit_code once the run ended (124: the time limit)

under `timeout` at the push's session limit, without the caller's credentials, and without a GPU
when the push asked for none. Each run is a process session of its own, so it outlives this server,
as a Kaggle session outlives a closed laptop: a server started again on the same root finds every
version where it is. Attached datasets, competitions and models are empty folders here (nothing is
downloaded); give the rehearsal local paths instead. The GPU quota counts the wall time of every
version that asked for a GPU against `quota_hours` a week, reset on Saturdays at 00:00 UTC.
"""

import datetime
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse

HOST, PORT = "127.0.0.1", 7777     # where kagglesdk's TEST environment sends its requests
PREFIX = "/api/v1/kernels.KernelsApiService/"
SESSION_SECONDS = 12 * 3600        # Kaggle's limit when a push names none
KILL_AFTER = 30                    # seconds between the time limit's SIGTERM and SIGKILL


class ApiError(Exception):
    """An answer with an error status: Kaggle's JSON body {"code": ..., "message": ...}."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class StandIn:
    """The server and the sessions it runs. Use as a context manager: it serves on a thread of its own
    from entry and stops (the port closed) on exit; the sessions it started go on."""

    def __init__(self, root, quota_hours=30.0, python=sys.executable):
        self.root, self.quota_hours, self.python = os.path.abspath(root), quota_hours, python
        self.server = self.thread = None
        self.lock = threading.RLock()  # one push at a time: version numbers are counted from the folders
        self.children = {}             # pid -> Popen of the sessions this server started, reaped by poll()

    def __enter__(self):
        os.makedirs(self.root, exist_ok=True)
        self.server = http.server.ThreadingHTTPServer((HOST, PORT), handler_for(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="kaggle-standin",
                                       daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    # -- the API --------------------------------------------------------------------------------

    def answer(self, method, request):
        if method == "SaveKernel":
            return self.save_kernel(request)
        owner, slug = request.get("userName", ""), request.get("kernelSlug", "")
        if method == "GetAcceleratorQuotaStatistics":
            return self.quota()
        if method == "GetKernel":
            versions = self.versions(owner, slug)
            if not versions:
                raise ApiError(404, f"kernel {owner}/{slug} not found")
            return {"metadata": {"ref": f"{owner}/{slug}", "slug": slug, "currentVersionNumber": versions[-1]}}
        folder = self.version_folder(owner, slug, request.get("versionLabel"))
        if method == "GetKernelSessionStatus":
            status, message = self.status(folder)
            return {"status": status, "failureMessage": message}
        if method == "ListKernelSessionOutput":
            return self.output(folder, int(request.get("pageSize") or 20), int(request.get("pageToken") or 0))
        raise ApiError(404, f"the stand-in does not answer {method}")

    def save_kernel(self, request):
        owner, _, slug = (request.get("slug") or "").partition("/")
        if not owner or not slug or request.get("language") != "python" or request.get("kernelType") != "script":
            raise ApiError(400, "a push needs slug owner/name, language python and kernel type script")
        with self.lock:
            version = max(self.versions(owner, slug), default=0) + 1
            folder = os.path.join(self.root, owner, slug, f"v{version}")
            for sub in ("input", "working", "tmp"):
                os.makedirs(os.path.join(folder, sub))
            invalid = self.attach(folder, request)
            with open(os.path.join(folder, "kaggle_kernel.py"), "w", encoding="utf-8") as f:
                f.write(request.get("text") or "")
            pushed = {k: v for k, v in request.items() if k != "text"}
            pushed["startedAt"] = time.time()
            with open(os.path.join(folder, "pushed.json"), "w", encoding="utf-8") as f:
                json.dump(pushed, f, indent=1)
            self.start(folder, pushed)
        return {"ref": f"/code/{owner}/{slug}", "url": f"http://localhost:{PORT}/code/{owner}/{slug}",
                "versionNumber": version, "error": "", "invalidKernelSources": invalid}

    def attach(self, folder, request):
        """Lay out input/: the newest complete version's output of each attached notebook (hard links,
        read-only); an empty folder for each dataset, competition or model. Returns the notebooks that
        have no complete version, which Kaggle reports as invalid sources."""
        invalid = []
        for source in request.get("kernelDataSources") or []:
            owner, _, slug = source.partition("/")
            done = [v for v in self.versions(owner, slug)
                    if self.status(self.version_folder(owner, slug, f"v{v}"))[0] == "COMPLETE"]
            if not done:
                invalid.append(source)
                continue
            output = os.path.join(self.root, owner, slug, f"v{done[-1]}", "working")
            shutil.copytree(output, os.path.join(folder, "input", slug), copy_function=link_or_copy)
        for key in ("datasetDataSources", "competitionDataSources", "modelDataSources"):
            for source in request.get(key) or []:
                os.makedirs(os.path.join(folder, "input", source.split("/")[-1]), exist_ok=True)
        set_writable(os.path.join(folder, "input"), False)
        return invalid

    def start(self, folder, pushed):
        """Run the version's file as a session: its own process group, stdout and stderr to log.txt, the
        exit status to exit_code once it ends (written by the shell, so it is there if this server is not)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("KAGGLE_") and k not in ("BATON_INPUT_ROOTS", "PYTHONPATH")}
        env.update(BATON_INPUT_ROOTS=os.path.join(folder, "input"), TMPDIR=os.path.join(folder, "tmp"),
                   PYTHONUNBUFFERED="1")
        if not pushed.get("enableGpu"):
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU session
        limit = int(pushed.get("sessionTimeoutSeconds") or SESSION_SECONDS)
        script = (f'timeout --signal=TERM --kill-after={KILL_AFTER} {limit} "$0" ../kaggle_kernel.py > ../log.txt 2>&1; '
                  f'echo $? > ../exit_code.tmp && mv ../exit_code.tmp ../exit_code')
        child = subprocess.Popen(["/bin/sh", "-c", script, self.python], cwd=os.path.join(folder, "working"),
                                 env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.children[child.pid] = child
        with open(os.path.join(folder, "pid"), "w", encoding="utf-8") as f:
            f.write(str(child.pid))

    def status(self, folder):
        """(status, failure message) of a version: from its exit status, or whether its process lives."""
        code = exit_code(folder)
        if code is None:
            with self.lock:  # a push under way has made the folder but not yet started the run
                started = os.path.exists(os.path.join(folder, "pid"))
            if started and self.alive(folder):
                return "RUNNING", ""
            code = exit_code(folder)  # it may have ended in between
            if code is None:
                return "ERROR", "the session was lost: its process ended without an exit status"
        inputs = os.path.join(folder, "input")
        if not os.stat(inputs).st_mode & 0o200:
            set_writable(inputs, True)  # the session is over: its inputs are plain files again
        if code == 0:
            return "COMPLETE", ""
        if code in (124, 137):
            return "ERROR", "the session ran past its time limit and was stopped"
        return "ERROR", f"the script exited with status {code}"

    def alive(self, folder):
        with open(os.path.join(folder, "pid"), encoding="utf-8") as f:
            pid = int(f.read())
        child = self.children.get(pid)
        if child is not None:
            return child.poll() is None
        try:  # a session started before this server: an orphan, reaped by init when it ends
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def output(self, folder, page_size, offset):
        working = os.path.join(folder, "working")
        names = sorted(os.path.relpath(os.path.join(d, n), working).replace(os.sep, "/")
                       for d, _, files in os.walk(working) for n in files)
        relative = os.path.relpath(folder, self.root).replace(os.sep, "/")
        page = names[offset:offset + page_size]
        files = [{"fileName": n, "url": f"http://localhost:{PORT}/files/{relative}/{urllib.parse.quote(n)}"}
                 for n in page]
        more = offset + page_size < len(names)
        return {"files": files, "log": kaggle_log(os.path.join(folder, "log.txt")),
                "nextPageToken": str(offset + page_size) if more else ""}

    def quota(self):
        now = datetime.datetime.now(datetime.timezone.utc)
        week_start = (now - datetime.timedelta(days=(now.weekday() - 5) % 7)).replace(hour=0, minute=0, second=0,
                                                                                      microsecond=0)
        used = 0.0
        for pushed_file in self.all_pushes():
            with open(pushed_file, encoding="utf-8") as f:
                pushed = json.load(f)
            code_file = os.path.join(os.path.dirname(pushed_file), "exit_code")
            ended = os.path.getmtime(code_file) if os.path.exists(code_file) else now.timestamp()  # running: so far
            if pushed.get("enableGpu"):
                used += max(0.0, ended - max(pushed["startedAt"], week_start.timestamp()))
        reset = week_start + datetime.timedelta(days=7)
        return {"quotaRefreshTime": reset.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "gpuQuota": {"timeUsed": f"{int(used)}s", "timeReserved": "0s",
                             "totalTimeAllowed": f"{int(self.quota_hours * 3600)}s"}}

    # -- folders --------------------------------------------------------------------------------

    def versions(self, owner, slug):
        folder = os.path.join(self.root, owner, slug)
        found = [int(n[1:]) for n in os.listdir(folder) if n[:1] == "v" and n[1:].isdigit()] \
            if os.path.isdir(folder) else []
        return sorted(found)

    def version_folder(self, owner, slug, label):
        versions = self.versions(owner, slug)
        if not versions:
            raise ApiError(404, f"kernel {owner}/{slug} not found")
        version = int(label[1:]) if label else versions[-1]
        if version not in versions:
            raise ApiError(404, f"kernel {owner}/{slug} has no version {version}")
        return os.path.join(self.root, owner, slug, f"v{version}")

    def all_pushes(self):
        for folder, _, files in os.walk(self.root):
            if "pushed.json" in files:
                yield os.path.join(folder, "pushed.json")


def exit_code(folder):
    path = os.path.join(folder, "exit_code")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return int(f.read().strip() or -1)


def kaggle_log(path):
    """The log as Kaggle's API gives it: a JSON list of {stream_name, time, data}, one per line."""
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines(keepends=True)
    return json.dumps([{"stream_name": "stdout", "time": 0.0, "data": line} for line in lines])


def link_or_copy(source, target):
    """An attached output costs no copy: a hard link, or a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def set_writable(root, writable):
    """Read-only inputs, as Kaggle mounts them (root ignores modes, so a root run can still write)."""
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o755 if writable else 0o555)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644 if writable else 0o444)


def served_file(root, url_path):
    """/files/<owner>/<slug>/v<N>/<path>: that file of the version's working folder, or None (nothing
    outside a working folder is served)."""
    parts = urllib.parse.unquote(url_path).split("/")[2:] if url_path.startswith("/files/") else []
    if len(parts) < 4 or ".." in parts[:3]:
        return None
    working = os.path.realpath(os.path.join(root, *parts[:3], "working"))
    path = os.path.realpath(os.path.join(working, *parts[3:]))
    return path if path.startswith(working + os.sep) and os.path.isfile(path) else None


def handler_for(standin):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                if not self.headers.get("Authorization"):
                    raise ApiError(401, "no credentials were sent")
                if not self.path.startswith(PREFIX):
                    raise ApiError(404, f"the stand-in does not answer {self.path}")
                self.reply(200, standin.answer(self.path[len(PREFIX):], json.loads(body or b"{}")))
            except ApiError as e:
                self.reply(e.code, {"code": e.code, "message": str(e)})

        def do_GET(self):
            path = served_file(standin.root, self.path)
            if path is None:
                self.reply(404, {"code": 404, "message": f"no file {self.path}"})
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(os.path.getsize(path)))
            self.end_headers()
            with open(path, "rb") as f:
                shutil.copyfileobj(f, self.wfile)

        def reply(self, code, payload):
            data = json.dumps(payload).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # quiet: the driver prints what matters
            pass

    return Handler
