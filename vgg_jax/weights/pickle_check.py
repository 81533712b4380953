"""Bounds a pickle before it is unpickled: one pass over its opcodes (`pickletools.genops`)
that builds nothing, only tracks on a symbolic stack what each value would be.

A restricted unpickler stops code from running, but not a few hundred bytes from costing
gigabytes or a crash while they are unpickled: a memo index of 2**27 makes the unpickler
allocate a 2**27-slot memo; a million nested tuples crash the interpreter (its C code recurses
once per level); tuples that share their halves, used as a dict key, take 2**depth steps to
hash; a byte of EMPTY_SET builds 200 bytes. So this pass refuses, before anything is built: a
pickle longer than MAX_PICKLE_BYTES or building more than MAX_VALUES values (MAX_CONTAINERS
containers and objects), memo indices that skip ahead, values nested deeper than MAX_DEPTH
(containers may not be filled once they sit inside another, so depths cannot be grown behind
the check's back), dict keys and set items other than strings and ints, ints longer than
MAX_INT_BITS (Python cannot even print one of 3.8 MB), and opcodes a torch.save state dict
never uses.
"""

from __future__ import annotations

import io
import pickletools

from vgg_jax.weights.errors import WeightsError

MAX_PICKLE_BYTES = 4 * 2**20  # a VGG state dict's pickle is a few kB; a training checkpoint's, well under 1 MB
MAX_DEPTH = 32  # a torch.save checkpoint nests about 6 deep (checkpoint, optimizer, state, ...)
# Counts bound what the unpickler allocates (about 50 MB at most), where the byte count alone
# would allow 70 times the pickle's size.
MAX_VALUES = 2**20
MAX_CONTAINERS = 2**16  # a VGG state dict builds 5 per tensor
MAX_INT_BITS = 256  # tensor records hold int64s; a training checkpoint may hold 128-bit RNG states
HASHABLE_KINDS = ("str", "int")  # hashing these costs their length, nothing more

SCALARS = {  # opcode -> kind of the value it pushes
    **dict.fromkeys(("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"), "int"),
    **dict.fromkeys(("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
                     "SHORT_BINUNICODE", "BINUNICODE8"), "str"),
    **dict.fromkeys(("NONE", "NEWTRUE", "NEWFALSE", "FLOAT", "BINFLOAT", "BINBYTES", "SHORT_BINBYTES",
                     "BINBYTES8", "BYTEARRAY8"), "scalar"),
}
EMPTY_CONTAINERS = ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE")
MARKED_CONTAINERS = ("TUPLE", "LIST", "DICT", "FROZENSET")  # built from the items above a MARK
FILLS = ("APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD")  # add to the value below
IGNORED = ("PROTO", "FRAME")


class Value:
    """What the unpickler would build at one stack slot: its kind and nesting depth."""

    __slots__ = ("kind", "depth", "inside")

    def __init__(self, kind: str, items: list[Value] = ()):
        self.kind = kind
        # an object (a REDUCE's result) may be one of its arguments: it counts as deep as they are
        self.depth = 1 + max((item.depth for item in items), default=0) if kind in ("container", "object") else 0
        self.inside = False  # placed in another value: filling it now could deepen that one unseen
        for item in items:
            item.inside = True


class PickleWalk:
    """The symbolic stack machine; `step` raises ValueError on what it refuses."""

    def __init__(self):
        self.stack: list[Value] = []
        self.marks: list[int] = []  # stack heights at each MARK
        self.memo: dict[int, Value] = {}
        self.built = {"value": 0, "container": 0}  # how many the unpickler would allocate

    def pop(self, count: int = 1) -> list[Value]:
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) - count < floor:
            raise ValueError("the pickle pops more than it pushed")
        items = self.stack[len(self.stack) - count:]
        del self.stack[len(self.stack) - count:]
        return items

    def pop_mark(self) -> list[Value]:
        if not self.marks:
            raise ValueError("the pickle closes a MARK it never opened")
        items = self.stack[self.marks[-1]:]
        del self.stack[self.marks.pop():]
        return items

    def push(self, value: Value, new: bool = True) -> None:
        if value.depth > MAX_DEPTH:
            raise ValueError(f"values nested more than {MAX_DEPTH} deep")
        if new:
            self.built["value"] += 1
            self.built["container"] += value.kind in ("container", "object")
            if self.built["value"] > MAX_VALUES or self.built["container"] > MAX_CONTAINERS:
                raise ValueError(f"more than {MAX_VALUES} values or {MAX_CONTAINERS} containers")
        self.stack.append(value)

    def top(self) -> Value:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise ValueError("the pickle reads a value it never pushed")
        return self.stack[-1]

    @staticmethod
    def check_keys(keys: list[Value]) -> None:
        for key in keys:
            if key.kind not in HASHABLE_KINDS:
                raise ValueError(f"a dict key or set item that is a {key.kind}, not a string or an int")

    def fill(self, target: Value, items: list[Value]) -> None:
        if target.inside:
            raise ValueError("a container filled after it was placed inside another")
        if any(item is target for item in items):
            raise ValueError("a container placed inside itself")
        filled = Value("container", items)
        target.depth = max(target.depth, filled.depth)
        if target.depth > MAX_DEPTH:
            raise ValueError(f"values nested more than {MAX_DEPTH} deep")

    def step(self, name: str, arg) -> None:
        if name in IGNORED:
            return
        if name in SCALARS:
            if SCALARS[name] == "int" and int(arg).bit_length() > MAX_INT_BITS:
                raise ValueError(f"an int of {int(arg).bit_length()} bits, more than {MAX_INT_BITS}")
            self.push(Value(SCALARS[name]))
        elif name in EMPTY_CONTAINERS:
            self.push(Value("container"))
        elif name == "MARK":
            self.marks.append(len(self.stack))
        elif name in MARKED_CONTAINERS:
            items = self.pop_mark()
            if name in ("DICT", "FROZENSET"):
                self.check_keys(items[0::2] if name == "DICT" else items)
            self.push(Value("container", items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            self.push(Value("container", self.pop(int(name[-1]))))
        elif name in FILLS:
            marked = name in ("APPENDS", "SETITEMS", "ADDITEMS")
            items = self.pop_mark() if marked else self.pop(2 if name == "SETITEM" else 1)
            if name in ("SETITEM", "SETITEMS"):
                self.check_keys(items[0::2])
            elif name == "ADDITEMS":
                self.check_keys(items)
            self.fill(self.top(), items)
        else:
            self.reference_step(name, arg)

    def reference_step(self, name: str, arg) -> None:
        """The opcodes that refer to values made before: the memo, globals and calls, stack moves."""
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            index = len(self.memo) if name == "MEMOIZE" else int(arg)
            if not 0 <= index <= len(self.memo) + 1:  # picklers number their memo 0, 1, 2 (Python 2's from 1)
                raise ValueError(f"memo index {index} skips ahead of the {len(self.memo)} values memoized")
            self.memo[index] = self.top()
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in self.memo:
                raise ValueError(f"memo index {int(arg)} was never set")
            self.push(self.memo[int(arg)], new=False)
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "STACK_GLOBAL" and any(value.kind != "str" for value in self.pop(2)):
                raise ValueError("a global named by values that are not strings")
            self.push(Value("global"))
        elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX"):
            arguments = self.pop(3 if name == "NEWOBJ_EX" else 2)
            if arguments[0].kind != "global":
                raise ValueError(f"{name} calls a value that is not an allowed global")
            self.push(Value("object", arguments[1:]))
        elif name == "BINPERSID":
            self.push(Value("object", self.pop()))
        elif name == "POP":
            if self.marks and self.marks[-1] == len(self.stack):
                self.marks.pop()
            else:
                self.pop()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            self.push(self.top(), new=False)
        else:  # EXT*, INST, OBJ, PERSID, out-of-band buffers: never in a torch.save state dict
            raise ValueError(f"opcode {name}, which torch.save does not write")


def check_pickle(data: bytes) -> int:
    """The length of the pickle at the start of `data`, after checking it as the module says.
    `data` should hold at most MAX_PICKLE_BYTES; a pickle that does not end inside it is refused."""
    walk = PickleWalk()
    position = 0
    try:
        for opcode, arg, position in pickletools.genops(io.BytesIO(data[:MAX_PICKLE_BYTES])):
            if opcode.name == "STOP":
                if len(walk.stack) != 1 or walk.marks:
                    raise ValueError("the pickle ends with a malformed stack")
                return position + 1
            walk.step(opcode.name, arg)
    except ValueError as error:  # genops' own (bad opcode, truncated argument) and ours
        raise WeightsError(f"refusing the pickle at byte {position}: {error}") from None
    raise WeightsError(f"refusing the pickle: it does not end within {MAX_PICKLE_BYTES} bytes")
