"""Token authentication on every RPC, TLS and mutual TLS handshakes on loopback, exposure rules."""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from pathlib import Path

import grpc
import pytest

from device_agent import errors
from device_agent.cli import build_parser, cmd_serve, settings_from_args
from device_agent.rpc.client import AgentClient
from device_agent.settings import DaemonSettings, load_settings
from device_agent.rpc.server import create_server
from protos.hwnas.agent.v1 import agent_pb2 as pb
from protos.hwnas.agent.v1 import agent_pb2_grpc as pb_grpc
from _agent_util import running_agent, tiny_cnn_onnx
from conftest import wait_until

pytestmark = pytest.mark.timeout(120)
TOKEN = "correct-horse-battery-staple"


# ------------------------------------------------------------------------------ throwaway PKI
def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject_cn: str, key, issuer_cn: str, issuer_key, *, ca: bool, sans=(), client=False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert=None, key=None) -> str:
    from cryptography.hazmat.primitives import serialization as s

    if cert is not None:
        path.write_bytes(cert.public_bytes(s.Encoding.PEM))
    else:
        path.write_bytes(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server cert for localhost/127.0.0.1, a client cert, and a rogue CA + client."""
    pytest.importorskip("cryptography")
    from cryptography import x509

    d = tmp_path_factory.mktemp("pki")
    ca_key, rogue_key = _key(), _key()
    ca = _cert("hwnas test CA", ca_key, "hwnas test CA", ca_key, ca=True)
    rogue = _cert("rogue CA", rogue_key, "rogue CA", rogue_key, ca=True)
    srv_key, cli_key, bad_key = _key(), _key(), _key()
    srv = _cert("agent", srv_key, "hwnas test CA", ca_key, ca=False,
                sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cli = _cert("search-server", cli_key, "hwnas test CA", ca_key, ca=False, client=True)
    bad = _cert("intruder", bad_key, "rogue CA", rogue_key, ca=False, client=True)
    return {
        "ca": _write(d / "ca.pem", cert=ca), "rogue_ca": _write(d / "rogue.pem", cert=rogue),
        "srv_cert": _write(d / "srv.pem", cert=srv), "srv_key": _write(d / "srv.key", key=srv_key),
        "cli_cert": _write(d / "cli.pem", cert=cli), "cli_key": _write(d / "cli.key", key=cli_key),
        "bad_cert": _write(d / "bad.pem", cert=bad), "bad_key": _write(d / "bad.key", key=bad_key),
    }


# ------------------------------------------------------------------------------ token
def _every_rpc(stub: pb_grpc.AgentStub, metadata):
    model = tiny_cnn_onnx()
    sha = hashlib.sha256(model).hexdigest()
    head = pb.MeasureHeader(job_id="t", model_sha256=sha, model_size=len(model))
    calls = {
        "Describe": lambda: stub.Describe(pb.DescribeRequest(), timeout=10, metadata=metadata),
        "HasModel": lambda: stub.HasModel(pb.HasModelRequest(model_sha256=sha), timeout=10, metadata=metadata),
        "UploadModel": lambda: stub.UploadModel(iter([
            pb.UploadRequest(header=pb.UploadHeader(model_sha256=sha, model_size=len(model))),
            pb.UploadRequest(chunk=model)]), timeout=10, metadata=metadata),
        "Measure": lambda: stub.Measure(iter([pb.MeasureRequest(header=head), pb.MeasureRequest(chunk=model)]),
                                        timeout=10, metadata=metadata),
        "BuildEngine": lambda: list(stub.BuildEngine(pb.BuildEngineRequest(model_sha256=sha), timeout=10,
                                                     metadata=metadata)),
    }
    return calls


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),),
                                      (("authorization", TOKEN),),
                                      (("authorization", f"Bearer {TOKEN}x"),)],
                         ids=["missing", "wrong", "no-bearer", "longer"])
def test_every_rpc_requires_the_token(tmp_path, metadata):
    with running_agent(tmp_path, token=TOKEN) as (server, addr):
        channel = grpc.insecure_channel(addr)
        stub = pb_grpc.AgentStub(channel)
        for name, call in _every_rpc(stub, metadata).items():
            with pytest.raises(grpc.RpcError) as ei:
                call()
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        # nothing reached the service: no model stored
        assert server.service.cache.total_bytes == 0
        channel.close()
        with AgentClient(addr, token="wrong") as client:
            with pytest.raises(errors.AuthenticationError):
                client.describe()
            assert client.health() == "SERVING"  # health stays open (documented)


def test_right_token_passes(tmp_path):
    with running_agent(tmp_path, token=TOKEN) as (_, addr), AgentClient(addr, token=TOKEN) as client:
        assert client.describe()["device_key"]
        assert client.upload_model(tiny_cnn_onnx())["bytes_sent"] == len(tiny_cnn_onnx())


# ------------------------------------------------------------------------------ TLS / mTLS
def test_tls_handshake(tmp_path, pki):
    with running_agent(tmp_path, token=TOKEN, tls_cert=pki["srv_cert"], tls_key=pki["srv_key"]) as (_, addr):
        with AgentClient(addr, token=TOKEN, tls_ca=pki["ca"]) as client:
            assert client.describe()["device_key"]
        port = addr.rsplit(":", 1)[1]
        with AgentClient(f"localhost:{port}", token=TOKEN, tls_ca=pki["ca"]) as client:
            assert client.has_model("0" * 64) is False
        # a plaintext client cannot talk to a TLS agent
        with AgentClient(addr, token=TOKEN, timeout=3, retries=0) as client:
            with pytest.raises(errors.AgentUnavailable):
                client.describe()
        # an agent cert from an unknown CA is refused by the client
        with AgentClient(addr, token=TOKEN, tls_ca=pki["rogue_ca"], timeout=3, retries=0) as client:
            with pytest.raises(errors.AgentUnavailable):
                client.describe()


def test_mutual_tls(tmp_path, pki):
    settings = dict(tls_cert=pki["srv_cert"], tls_key=pki["srv_key"], tls_client_ca=pki["ca"])
    with running_agent(tmp_path, **settings) as (_, addr):
        with AgentClient(addr, tls_ca=pki["ca"], tls_cert=pki["cli_cert"], tls_key=pki["cli_key"]) as client:
            assert client.describe()["device_key"]
        with AgentClient(addr, tls_ca=pki["ca"], timeout=3, retries=0) as client:  # no client cert
            with pytest.raises(errors.AgentUnavailable):
                client.describe()
        with AgentClient(addr, tls_ca=pki["ca"], tls_cert=pki["bad_cert"], tls_key=pki["bad_key"],
                         timeout=3, retries=0) as client:  # cert from another CA
            with pytest.raises(errors.AgentUnavailable):
                client.describe()


# ------------------------------------------------------------------------------ exposure rules
def test_refuses_non_loopback_without_auth(tmp_path):
    base = dict(cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="not loopback"):
        create_server("0.0.0.0:0", config=DaemonSettings(**base))
    for ok in (dict(token=TOKEN), dict(insecure=True)):
        server, port = create_server("0.0.0.0:0", config=DaemonSettings(**base, **ok))
        assert port > 0
        server.grpc_server.stop(0)
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "0",
                                      "--cache-dir", str(tmp_path / "c")])
    assert cmd_serve(args) == 2


def test_settings_from_toml_flags_and_token_file(tmp_path, monkeypatch):
    monkeypatch.delenv("HWNAS_AGENT_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'host = "0.0.0.0"\nport = 6000\nqueue_size = 7\ntoken_file = "{token_file}"\n'
                   'metrics = {{ latency_ms = "lat_raspi4" }}\n'.replace("{{", "{").replace("}}", "}"))
    s = load_settings(cfg)
    assert (s.host, s.port, s.queue_size, s.token, s.metrics) == (
        "0.0.0.0", 6000, 7, TOKEN, (("latency_ms", "lat_raspi4"),))
    assert TOKEN not in repr(s)
    s.check_exposure()
    args = build_parser().parse_args(["serve", "--config", str(cfg), "--port", "7000",
                                      "--metric", "latency_ms=lat_pixel3"])
    s2 = settings_from_args(args)
    assert (s2.port, s2.queue_size, s2.token, s2.metrics) == (7000, 7, TOKEN, (("latency_ms", "lat_pixel3"),))
    bad = tmp_path / "bad.toml"
    bad.write_text("colour = 'blue'\n")
    with pytest.raises(ValueError, match="unknown agent settings"):
        load_settings(bad)


# ------------------------------------------------------------------------------ the search's side
def test_search_and_export_reach_a_mutual_tls_agent(tmp_path, pki):
    """``hwnas search --agent-tls-*`` measures on an agent that serves mutual TLS with a token
    (a table agent, so no training); without the client certificate the search stops with a
    clear error and nothing is measured."""
    import json
    import subprocess
    import sys

    from _agent_util import write_nb201_table
    from device_agent.launcher import REPO_ROOT

    table = tmp_path / "synth.csv.gz"
    write_nb201_table(table)

    def hwnas(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=180)

    settings = dict(token=TOKEN, tls_cert=pki["srv_cert"], tls_key=pki["srv_key"], tls_client_ca=pki["ca"],
                    backend="table", table=str(table), metrics={"latency_ms": "lat_synth"}, device_key="synth")
    common = ["--space", "nb201", "--accuracy-table", f"{table}:acc", "--budget", "8", "--seed", "1",
              "--no-progress", "--objective", "accuracy", "--objective", "latency_ms", "--token", TOKEN]
    with running_agent(tmp_path, **settings) as (_, addr):
        port = addr.rsplit(":", 1)[1]
        ok = hwnas("search", "--out", str(tmp_path / "ok"), "--agent", f"localhost:{port}", *common,
                   "--agent-tls-ca", pki["ca"], "--agent-tls-cert", pki["cli_cert"],
                   "--agent-tls-key", pki["cli_key"])
        assert ok.returncode == 0, ok.stderr[-3000:]
        # no client certificate: the handshake fails, the search says so and stops
        bad = hwnas("search", "--out", str(tmp_path / "bad"), "--agent", f"localhost:{port}", *common,
                    "--agent-tls-ca", pki["ca"])
        assert bad.returncode != 0
        assert "localhost:" + port in bad.stderr and "Traceback" not in bad.stderr, bad.stderr[-2000:]
        # half a client identity is a configuration error before anything starts
        half = hwnas("search", "--out", str(tmp_path / "half"), "--agent", f"localhost:{port}", *common,
                     "--agent-tls-ca", pki["ca"], "--agent-tls-cert", pki["cli_cert"])
        assert half.returncode != 0 and "tls_cert and tls_key go together" in half.stderr, half.stderr
    res = hwnas("results", str(tmp_path / "ok"), "--json")
    cands = json.loads(res.stdout)
    assert len(cands) == 8 and all(c["status"] == "done" for c in cands), [c.get("error") for c in cands]
    assert all(c["measurements"][0]["device_key"] == "synth" for c in cands)


def test_registry_over_mutual_tls_with_a_tls_agent(tmp_path, pki):
    """The whole fleet path encrypted: the search's registry serves mutual TLS, an agent that
    itself serves mutual TLS joins with ``--register-tls-*`` (describing itself in process, not
    over its own TLS port), the search dials it with its client certificate and measures every
    candidate. A plaintext or certificate-less client is refused by the registry; a registry on
    a non-loopback address without a token is refused before it starts."""
    import dataclasses
    import socket
    import threading

    from _agent_util import write_nb201_table
    from device_agent.launcher import start_local_agent
    from protos.hwnas.registry.v1 import registry_pb2, registry_pb2_grpc
    from search import config as cfgmod
    from search.fleet.registry import RegistryServer
    from search.loop.runner import SearchRunner

    table = tmp_path / "synth.csv.gz"
    write_nb201_table(table)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reg = f"localhost:{port}"
    cfg = dataclasses.replace(
        cfgmod.SearchConfig(), space="nb201", budget=10, population_size=4, accuracy_table=f"{table}:acc",
        objectives=("accuracy", "latency_ms"),
        agents=dataclasses.replace(cfgmod.AgentsConfig(), token=TOKEN, tls_ca=pki["ca"],
                                   tls_cert=pki["cli_cert"], tls_key=pki["cli_key"])).validate()
    runner = SearchRunner(config=cfg, run_dir=tmp_path / "run", agents=[], progress=False,
                          registry_port=port, wait_agents_s=60, heartbeat_s=1.0,
                          registry_tls={"cert": pki["srv_cert"], "key": pki["srv_key"], "client_ca": pki["ca"]})
    summary: dict = {}
    thread = threading.Thread(target=lambda: summary.update(runner.run()), daemon=True)
    thread.start()
    agent = None
    try:
        assert runner.fleet.registry_started.wait(30), "the registry did not start"
        assert runner.registry.tls
        # refused: plaintext, and TLS without a client certificate (handshake fails)
        request = registry_pb2.RegisterRequest(address="127.0.0.1:1", device_key="synth")
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        with open(pki["ca"], "rb") as fh:
            ca_only = grpc.ssl_channel_credentials(root_certificates=fh.read())
        for channel in (grpc.insecure_channel(reg), grpc.secure_channel(reg, ca_only)):
            with channel:
                with pytest.raises(grpc.RpcError) as err:
                    registry_pb2_grpc.RegistryStub(channel).Register(request, metadata=metadata, timeout=5)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not runner.pool.agents, "nothing registered through a refused channel"

        tls_args = ["--tls-cert", pki["srv_cert"], "--tls-key", pki["srv_key"], "--tls-client-ca", pki["ca"]]
        agent = start_local_agent(token=TOKEN, extra_args=[
            "--backend", "table", "--table", str(table), "--metric", "latency_ms=lat_synth",
            "--device-key", "synth", *tls_args, "--register", reg, "--register-tls-ca", pki["ca"],
            "--register-tls-cert", pki["cli_cert"], "--register-tls-key", pki["cli_key"]],
            client_tls={"tls_ca": pki["ca"], "tls_cert": pki["cli_cert"], "tls_key": pki["cli_key"]})
        thread.join(120)
        assert not thread.is_alive(), "search did not finish"
    finally:
        runner.close()
        if agent is not None:
            log = agent.log_tail(3000)
            agent.stop(timeout=5)
    assert summary.get("candidates") == 10, log
    (state,) = runner.pool.agents.values()
    assert state.device_key == "synth" and state.done == 10

    with pytest.raises(ValueError, match="without a token"):
        RegistryServer(pool=None, host="0.0.0.0", port=0)
    with pytest.raises(ValueError, match="go together"):
        RegistryServer(pool=None, port=0, tls_cert=pki["srv_cert"])


def test_the_run_store_keeps_no_token_and_resume_asks_for_it(tmp_path):
    """A run folder gets copied and shared: the agents' token is not written into it (not in the
    SQLite file nor its WAL); ``--resume`` says the token is needed and works when it is given."""
    import subprocess
    import sys

    from _agent_util import write_nb201_table
    from device_agent.launcher import REPO_ROOT

    table = tmp_path / "synth.csv.gz"
    write_nb201_table(table)

    def hwnas(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=180)

    run = tmp_path / "run"
    with running_agent(tmp_path, token=TOKEN, backend="table", table=str(table),
                       metrics={"latency_ms": "lat_synth"}, device_key="synth") as (_, addr):
        first = hwnas("search", "--out", str(run), "--space", "nb201", "--accuracy-table", f"{table}:acc",
                      "--objective", "accuracy", "--objective", "latency_ms", "--budget", "6",
                      "--no-progress", "--agent", addr, "--token", TOKEN)
        assert first.returncode == 0, first.stderr[-2000:]
        stored = b"".join(p.read_bytes() for p in run.glob("run.sqlite*"))
        assert TOKEN.encode() not in stored
        no_token = hwnas("search", "--resume", str(run), "--no-progress", "--agent", addr)
        assert no_token.returncode != 0 and "pass --token" in no_token.stderr, no_token.stderr
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        again = hwnas("search", "--resume", str(run), "--no-progress", "--agent", addr, "--token-file", str(token_file))
        assert again.returncode == 0, again.stderr[-2000:]
