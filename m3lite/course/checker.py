"""The verdict printed under an exercise: right, not yet (with the first failing case), or unfinished."""
import torch


def close(got, expected, atol=1e-5, rtol=1e-4):
    """Compare a learner's answer with the expected one; return (ok, why-not)."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return False, f"expected a tensor, got {type(got).__name__}"
        if got.shape != expected.shape:
            return False, f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
        if expected.dtype == torch.bool and got.dtype != torch.bool:
            return False, f"expected a bool tensor, got dtype {got.dtype}"
        if not expected.dtype.is_floating_point:
            differ = (got.to(expected.dtype) != expected).nonzero()
            if len(differ) == 0:
                return True, ""
            where = tuple(differ[0].tolist())
            return False, (f"{len(differ)} entries differ, the first at index {where}: "
                           f"expected {expected[where].item()}, got {got[where].item()}")
        got = got.to(expected.dtype)
        if (got.isnan() & ~expected.isnan()).any():
            return False, "your result has NaN where a number was expected"
        if not torch.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=True):
            err = (got - expected).abs().nan_to_num(nan=float("inf"), posinf=float("inf")).max().item()
            return False, f"values differ (max abs error {err:.3g})"
        return True, ""
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return False, f"expected {len(expected)} results, got {got!r}"
        for i, (g, e) in enumerate(zip(got, expected)):
            ok, why = close(g, e, atol, rtol)
            if not ok:
                return False, f"result {i}: {why}"
        return True, ""
    ok = got == expected
    return ok, "" if ok else f"expected {expected!r}, got {got!r}"


def verdict(name, attempt, cases, compare=close):
    """Run `attempt` on each (label, args, expected) case and print one line saying how it went."""
    cases = list(cases)
    for label, args, expected in cases:
        try:
            got = attempt(*args)
        except NotImplementedError:
            print(f"… {name}: not done yet. Fill in the function, run its cell, then this one.")
            return False
        except Exception as error:  # the learner's code failed: say how, don't stop the notebook
            print(f"✗ {name}: on {label} your function raised {type(error).__name__}: {error}")
            return False
        ok, why = compare(got, expected)
        if not ok:
            print(f"✗ {name}: not yet. On {label}: {why}.")
            return False
    print(f"✓ {name}: correct on all {len(cases)} cases.")
    return True
