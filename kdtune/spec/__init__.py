"""The spec: schema (pure pydantic), loading (YAML, ``--set``) and every path rule.

``from kdtune.spec import Spec, SpecError, parse_spec`` is the usual entry; checks that need the
registries (models, methods, search spaces) are in ``kdtune.checks``.
"""

from kdtune.spec.load import apply_overrides, dump_spec, format_error, masked, parse_spec, read_spec, read_yaml
from kdtune.spec.schema import Spec, SpecError

__all__ = ["Spec", "SpecError", "apply_overrides", "dump_spec", "format_error", "masked",
           "parse_spec", "read_spec", "read_yaml"]
