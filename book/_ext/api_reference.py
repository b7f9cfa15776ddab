"""Sphinx extension: an API reference that documents every public name and resolves type aliases.

Two gaps of ``sphinx.ext.autodoc`` (Sphinx 7.4) that the strict ``-W -n`` build would report:

* Module-level constants and type aliases listed in ``__all__`` (``MODES``, ``VIT_PRESETS``,
  ``UpsampleMode = Literal[...]``) are skipped unless they carry a ``#:`` doc comment, even with
  ``undoc-members``; the docstrings that name them (``:data:`MODES```) then point nowhere.
  :class:`PublicDataDocumenter` documents them with their value when it is short.
* A parameter annotated with a type alias (``mode: UpsampleMode``) becomes a ``py:class``
  reference, but an alias is documented as data, so the reference does not resolve.
  :func:`_resolve_alias` looks the name up among all Python objects of the module instead. An
  alias that is not public (not in ``__all__``) and is a ``Literal`` of allowed strings is shown
  as plain text: the house style lists the allowed values in the argument's description.

Anything else that does not resolve still fails the strict build.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing

from sphinx.ext.autodoc import DataDocumenter, ModuleDocumenter

_MAX_VALUE_CHARS = 100  # longer values (preset tables) are left to the source link and the prose


class PublicDataDocumenter(DataDocumenter):
    """Document module data in ``__all__`` that has no ``#:`` comment (DataDocumenter skips it)."""

    objtype = "publicdata"
    directivetype = "data"
    priority = DataDocumenter.priority - 1  # a documented constant keeps the regular documenter

    @classmethod
    def can_document_member(cls, member, membername, isattr, parent) -> bool:
        callable_or_type = inspect.isclass(member) or inspect.isroutine(member) or inspect.ismodule(member)
        return isinstance(parent, ModuleDocumenter) and not isattr and not callable_or_type

    def should_suppress_value_header(self) -> bool:
        return len(repr(self.object)) > _MAX_VALUE_CHARS or super().should_suppress_value_header()

    def get_doc(self):
        # Without a comment the inherited lookup would show the docstring of the value's type
        # (tuple's, typing.Literal's); an undocumented constant is better shown by its value alone.
        comment = self.get_module_comment(self.objpath[-1])
        return [comment] if comment else []


def _resolve_alias(app, env, node, contnode):
    if node.get("refdomain") != "py" or node.get("reftype") != "class":
        return None
    domain = env.get_domain("py")
    target, module = node["reftarget"], node.get("py:module")
    matches = domain.find_obj(env, module, node.get("py:class"), target, None, 0)
    if len(matches) == 1:
        name, obj = matches[0]
        return domain.resolve_xref(env, node["refdoc"], app.builder, "obj", name, node, contnode)
    if module and "." not in target:
        try:
            value = getattr(importlib.import_module(module), target)
        except (ImportError, AttributeError):
            return None
        if _is_literal_alias(value):
            return contnode
    return None


def _is_literal_alias(value) -> bool:
    """``Literal["a", "b"]``, optionally ``| None``."""
    if typing.get_origin(value) is typing.Literal:
        return True
    args = typing.get_args(value) if typing.get_origin(value) in (typing.Union, types.UnionType) else ()
    return bool(args) and all(a is type(None) or typing.get_origin(a) is typing.Literal for a in args)


def setup(app):
    app.setup_extension("sphinx.ext.autodoc")
    app.add_autodocumenter(PublicDataDocumenter)
    app.connect("missing-reference", _resolve_alias)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
