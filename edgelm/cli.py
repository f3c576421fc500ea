"""The `edgelm` command line: a thin Typer layer. Each command calls one library function.

Heavy modules (torch, onnx) are imported inside the commands that need them, so `edgelm run`
and `edgelm devices` work on a device that has only the core install.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import __version__
from .errors import EdgelmError
from .fileio import write_stdout

try:  # typer >= 0.2x carries its own click, whose usage errors derive from TyperException
    from typer import TyperException as UsageFailure
except ImportError:  # older typer on click (Python 3.8 gets typer <= 0.20): click's base class
    from click import ClickException as UsageFailure  # type: ignore[assignment]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Compile and run small byte-level recurrent LMs on edge devices.")
devices_app = typer.Typer(add_completion=False, help="Device profiles.", invoke_without_command=True)
app.add_typer(devices_app, name="devices")


def _say(text: str) -> None:
    """Print to stdout; a stdout that cannot be written (closed, a full disk) is a one-line error."""
    write_stdout(text + "\n")


def _emit(result: dict, as_json: bool, text: str) -> None:
    _say(json.dumps(result, indent=2) if as_json else text)


def _version(value: bool) -> None:
    if value:
        _say(f"edgelm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                        help="Print the version and exit.")) -> None:
    """edgelm: train, evaluate, export, sign, build and run byte-level recurrent LMs."""


@app.command()
def train(corpus: List[Path] = typer.Argument(..., help="Text files to train on."),
          arch: str = typer.Option(..., help="lstm, gru, mingru, mamba or rglru."),
          preset: str = typer.Option("tiny", help="Size preset: tiny or small."),
          output: Path = typer.Option(..., "-o", "--output", help="Checkpoint to write."),
          steps: int = typer.Option(300, help="Optimizer steps."),
          seed: int = typer.Option(0, help="Random seed (training is deterministic for a seed)."),
          batch_size: int = typer.Option(32), seq_len: int = typer.Option(128),
          lr: float = typer.Option(3e-3, help="Peak learning rate.")) -> None:
    """Train a byte-level model on text files and write a checkpoint."""
    from .train import TrainConfig, train_from_files

    cfg = TrainConfig(steps=steps, seed=seed, batch_size=batch_size, seq_len=seq_len, lr=lr)
    summary = train_from_files(corpus, arch, preset, output, cfg)
    _say(f"wrote {output}: {summary['params']:,} params, held-out bpb {summary['val_bpb']:.3f}")


MODEL_HELP = ("A model: an edgelm checkpoint (.pt or .safetensors), a char-RNN state dict, or a "
              "transformers / mamba_ssm Mamba directory.")


def _is_bundle(path: Path) -> bool:
    from .runtime.manifest import MANIFEST  # standard library only: no torch

    return (path / MANIFEST).is_file()


@app.command("eval")
def eval_cmd(model: Path = typer.Argument(..., help=MODEL_HELP + " Or a bundle directory."),
             data: Path = typer.Option(..., help="Held-out text file."),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Bits per byte of a model on a file (streamed; memory does not grow with the file).
    A bundle's step graph runs in the runtime (no torch)."""
    if _is_bundle(model):  # numpy + onnxruntime only, torch is never imported
        from .runtime.evaluate import bundle_bits_per_byte

        res = bundle_bits_per_byte(model, data)
    else:
        from .evaluate import evaluate_file

        res = evaluate_file(model, data)
    _emit(res, as_json, f"{res['bits_per_byte']:.4f} bits/byte over {res['bytes']:,} bytes")


@app.command()
def convert(model: Path = typer.Argument(..., help=MODEL_HELP),
            output: Path = typer.Option(..., "-o", "--output", help="OUT.safetensors (no code: safe to share) or OUT.pt.")) -> None:
    """Write any model edgelm reads as an edgelm checkpoint (config and provenance kept)."""
    from .checkpoint import convert as convert_model

    res = convert_model(model, output)
    _say(f"wrote {output}: {res['arch']}, {res['params']:,} params ({res['format']})")


@app.command()
def quantize(model: Path = typer.Argument(..., help=MODEL_HELP),
             more_calib: Optional[List[Path]] = typer.Argument(None, metavar="[FILE...]",
                                                              help="More calibration files: --calib A B C."),
             recipe: str = typer.Option(..., help="w8, w8a8-naive, w8a8 or w4."),
             calib: List[Path] = typer.Option(..., help="Calibration text (32 KiB minimum, a few hundred KB recommended)."),
             output: Path = typer.Option(..., "-o", "--output", help="Quantized checkpoint to write."),
             data: Optional[Path] = typer.Option(None, help="Held-out text for the report's BPB (default: the last 10% of --calib)."),
             report: Optional[Path] = typer.Option(None, help="Write the full report as JSON."),
             plot: Optional[Path] = typer.Option(None, help="Plot per-channel activation ranges (needs matplotlib)."),
             group: int = typer.Option(64, help="int4 group size (w4): 32, 64 or 128.")) -> None:
    """Post-training quantization with outlier-aware channel handling: MODEL -> OUT.pt + report."""
    from .export.quant import quantize_checkpoint
    from .export.quant.report import format_report

    res = quantize_checkpoint(model, recipe, [*calib, *(more_calib or [])], output, data, report, plot, group,
                              progress=sys.stderr.isatty())
    _say(format_report(res) + f"\nwrote {output}")


@app.command()
def info(model: Path = typer.Argument(..., help=MODEL_HELP), as_json: bool = typer.Option(False, "--json"),
         device: Optional[str] = typer.Option(None, help="Also estimate latency and throughput on this device profile.")) -> None:
    """Architecture, parameter count, weight bytes per precision and state bytes per stream."""
    from .info import device_estimate, format_info, model_info

    res = model_info(model)
    if device is not None:
        res["estimate"] = device_estimate(model, device)
    _emit(res, as_json, format_info(res))


@app.command()
def export(model: Path = typer.Argument(..., help=MODEL_HELP), target: str = typer.Option("cpu", help="Device profile or family (see `edgelm devices`)."),
           precision: Optional[str] = typer.Option(None, help="fp32 or fp16 (default: the target's)."),
           output: Path = typer.Option(..., "-o", "--output", help="Bundle directory to write."),
           force: bool = typer.Option(False, "--force", help="Replace a non-empty output directory."),
           with_reference: bool = typer.Option(False, "--with-reference",
                                               help="Also store model.pt for the torch reference backend."),
           chunk: Optional[int] = typer.Option(None, help="Prefill chunk: bytes per prefill call, 1-256 "
                                               "(default: the architecture's, measured on x86: 32 or 64)."),
           native: bool = typer.Option(True, "--native/--no-native", help="Compile the C target where a C "
                                       "compiler is present: a parity check, and for cpu the library.")) -> None:
    """Export ONNX step + prefill graphs (and C) into a validated deployment bundle for a target."""
    from .export import export_bundle

    m = export_bundle(model, target, precision, output, force=force, with_reference=with_reference, chunk=chunk,
                      native=native)
    _say(f"wrote {output} for {m.target['name']} ({m.precision}); bundle {m.bundle_id[:12]}, "
         f"parity ok, max |dlogit| {m.validation['max_abs_logit_diff']:.2e}")


@app.command()
def build(bundle: Path) -> None:
    """Build a bundle's native C library (fp32/int8) and TensorRT engines (TensorRT targets) on the
    machine that will run it."""
    from .export.device_build import build_bundle

    for art in build_bundle(bundle):
        what = "native library" if art.kind == "native-library" else f"{art.graph} engine"
        _say(f"wrote {bundle / art.file}: {art.bytes:,} bytes ({what})")


@app.command()
def keygen(output: Path = typer.Option(..., "-o", "--output", help="Private key file; KEY.pub is written beside it."),
           force: bool = typer.Option(False, "--force", help="Replace existing key files.")) -> None:
    """Write an Ed25519 key pair for signing bundles: KEY (private, 0600) and KEY.pub."""
    from .runtime.signing import keygen as make_keys

    key, pub = make_keys(output, force)
    _say(f"wrote {key} (keep it secret) and {pub} (give it to devices: --trusted-key {pub})")


@app.command()
def sign(bundle: Path, key: Path = typer.Option(..., "--key", help="Private key from `edgelm keygen`.")) -> None:
    """Sign a bundle: BUNDLE/signature.ed25519 over its bundle_id, which covers every file."""
    from .runtime.bundle import sign_bundle

    _say(f"wrote {sign_bundle(bundle, key)}")


@app.command()
def profile(bundles: List[Path] = typer.Argument(..., metavar="BUNDLE...", help="A bundle; several are compared side by side."),
            backend: str = typer.Option("auto"), streams: str = typer.Option("1,8,64", help="Stream counts for throughput."),
            n_bytes: int = typer.Option(512, "--bytes", help="Bytes generated per measurement."),
            prompt_bytes: int = typer.Option(256, help="Prompt length for time to first byte."),
            temperature: float = typer.Option(0.8, help="Sampling temperature while measuring (0: greedy)."),
            json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON."),
            plot: Optional[Path] = typer.Option(None, help="Plot latency and throughput (needs matplotlib)."),
            estimate: Optional[str] = typer.Option(None, help="Only estimate for this device profile: runs nothing."),
            trusted_key: List[Path] = typer.Option([], "--trusted-key", help="Refuse a bundle none of these keys signed.")) -> None:
    """Latency, throughput and memory of bundles on this machine, with a roofline estimate."""
    from .runtime.profile_report import ProfileOptions, parse_streams, run_profile

    opts = ProfileOptions(backend, parse_streams(streams), n_bytes, prompt_bytes, temperature, sys.stderr.isatty(),
                          tuple(trusted_key))
    _say(run_profile(bundles, opts, estimate, json_out, plot))


@devices_app.callback()
def devices_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List device profiles."""
    if ctx.invoked_subcommand is not None:
        return
    from .devices import RUNTIME_PATHS, format_profiles, list_profiles

    profiles = list_profiles()
    _emit({"profiles": [p.to_dict() for p in profiles], "runtime_paths": RUNTIME_PATHS}, as_json,
          format_profiles(profiles))


@devices_app.command("detect")
def devices_detect(as_json: bool = typer.Option(False, "--json")) -> None:
    """Name the profile of the machine this runs on."""
    from .devices import detect

    found = detect()
    _emit(found, as_json, f"{found['profile']}  ({found['evidence']})")


@app.command()
def run(bundle: Path = typer.Argument(..., metavar="BUNDLE", help="A bundle directory, or a model "
                                     "(exported to a temporary cpu bundle first)."),
        prompt: Optional[str] = typer.Option(None, help="Prompt text (may be empty)."),
        prompt_file: Optional[Path] = typer.Option(None, help="Read the prompt bytes from a file."),
        max_bytes: int = typer.Option(256, help="Bytes to generate."),
        temperature: float = typer.Option(1.0), top_k: int = typer.Option(0), top_p: float = typer.Option(1.0),
        seed: Optional[int] = typer.Option(None), backend: str = typer.Option("auto"),
        streams: int = typer.Option(1, help="Generate this many streams in one batch."),
        as_json: bool = typer.Option(False, "--json", help="JSON lines with per-byte timing."),
        trusted_key: List[Path] = typer.Option([], "--trusted-key",
                                               help="Public key (repeatable): refuse a bundle none of them signed.")) -> None:
    """Stream generated text from a bundle (or a model) to stdout."""
    from .runtime.cli_run import RunOptions, run_bundle

    opts = RunOptions(prompt=prompt, prompt_file=prompt_file, max_bytes=max_bytes,
                      temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                      backend=backend, streams=streams, as_json=as_json, trusted_keys=tuple(trusted_key))
    if bundle.is_file() or (bundle.is_dir() and not _is_bundle(bundle)):  # a model: torch needed
        from .export import temporary_bundle

        with temporary_bundle(bundle, trusted=bool(trusted_key)) as made:
            run_bundle(made, opts)
        return
    run_bundle(bundle, opts)


def _usage_error(exc: UsageFailure) -> int:
    """Click's usage errors (a bad value, an unknown option, a missing argument) as one line."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # no arguments: click has printed the help
        return exc.exit_code
    ctx = getattr(exc, "ctx", None)
    problem = " ".join(exc.format_message().split()).rstrip(".")
    fix = f"see `{ctx.command_path} --help`" if ctx is not None else "see `edgelm --help`"
    typer.echo(f"error: {problem}; {fix}", err=True)
    return exc.exit_code


def _terminated(signum, frame) -> None:
    """SIGTERM unwinds like Ctrl-C: `finally` blocks remove temporary outputs, then exit 143."""
    raise SystemExit(128 + signum)


def main() -> None:
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        code = app(prog_name="edgelm", standalone_mode=False)  # returns --help's / Ctrl-C's exit code
    except EdgelmError as exc:
        typer.echo(f"error: {exc}", err=True)
        code = exc.exit_code
    except UsageFailure as exc:
        code = _usage_error(exc)
    except KeyboardInterrupt:
        code = 130
    except typer.Abort as exc:  # older typer (Python 3.8's) turns Ctrl-C into click's Abort
        code = 130 if isinstance(exc.__cause__, KeyboardInterrupt) else 1
    except BrokenPipeError:  # the reader left (`| head`): its choice, not an error
        code = 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
