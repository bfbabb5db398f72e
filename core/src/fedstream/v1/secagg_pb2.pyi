from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AdvertiseRequest(_message.Message):
    __slots__ = ("run_id", "round", "agent_id", "c_pk", "s_pk", "signature", "certificate")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    C_PK_FIELD_NUMBER: _ClassVar[int]
    S_PK_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    agent_id: str
    c_pk: bytes
    s_pk: bytes
    signature: bytes
    certificate: bytes
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., agent_id: _Optional[str] = ..., c_pk: _Optional[bytes] = ..., s_pk: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., certificate: _Optional[bytes] = ...) -> None: ...

class AdvertiseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("run_id", "round", "agent_id", "wait_s")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    agent_id: str
    wait_s: float
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., agent_id: _Optional[str] = ..., wait_s: _Optional[float] = ...) -> None: ...

class RosterEntry(_message.Message):
    __slots__ = ("agent_id", "c_pk", "s_pk", "signature", "certificate")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    C_PK_FIELD_NUMBER: _ClassVar[int]
    S_PK_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    c_pk: bytes
    s_pk: bytes
    signature: bytes
    certificate: bytes
    def __init__(self, agent_id: _Optional[str] = ..., c_pk: _Optional[bytes] = ..., s_pk: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., certificate: _Optional[bytes] = ...) -> None: ...

class RosterResponse(_message.Message):
    __slots__ = ("ready", "entries", "participants", "threshold")
    READY_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    entries: _containers.RepeatedCompositeFieldContainer[RosterEntry]
    participants: int
    threshold: int
    def __init__(self, ready: _Optional[bool] = ..., entries: _Optional[_Iterable[_Union[RosterEntry, _Mapping]]] = ..., participants: _Optional[int] = ..., threshold: _Optional[int] = ...) -> None: ...

class EncryptedShare(_message.Message):
    __slots__ = ("sender", "recipient", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: str
    recipient: str
    ciphertext: bytes
    def __init__(self, sender: _Optional[str] = ..., recipient: _Optional[str] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class ShareKeysRequest(_message.Message):
    __slots__ = ("run_id", "round", "agent_id", "seed_commitment", "shares")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    agent_id: str
    seed_commitment: bytes
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., agent_id: _Optional[str] = ..., seed_commitment: _Optional[bytes] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class ShareKeysResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SharesResponse(_message.Message):
    __slots__ = ("ready", "senders", "shares")
    READY_FIELD_NUMBER: _ClassVar[int]
    SENDERS_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    senders: _containers.RepeatedScalarFieldContainer[str]
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, ready: _Optional[bool] = ..., senders: _Optional[_Iterable[str]] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class SurvivorsResponse(_message.Message):
    __slots__ = ("ready", "survivors")
    READY_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    survivors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ready: _Optional[bool] = ..., survivors: _Optional[_Iterable[str]] = ...) -> None: ...

class ConfirmSurvivorsRequest(_message.Message):
    __slots__ = ("run_id", "round", "agent_id", "signature")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    agent_id: str
    signature: bytes
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., agent_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ConfirmSurvivorsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SurvivorSignature(_message.Message):
    __slots__ = ("agent_id", "signature")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    signature: bytes
    def __init__(self, agent_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UnmaskRequestResponse(_message.Message):
    __slots__ = ("ready", "seed_of", "key_of", "signatures")
    READY_FIELD_NUMBER: _ClassVar[int]
    SEED_OF_FIELD_NUMBER: _ClassVar[int]
    KEY_OF_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    seed_of: _containers.RepeatedScalarFieldContainer[str]
    key_of: _containers.RepeatedScalarFieldContainer[str]
    signatures: _containers.RepeatedCompositeFieldContainer[SurvivorSignature]
    def __init__(self, ready: _Optional[bool] = ..., seed_of: _Optional[_Iterable[str]] = ..., key_of: _Optional[_Iterable[str]] = ..., signatures: _Optional[_Iterable[_Union[SurvivorSignature, _Mapping]]] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("owner", "value")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    owner: str
    value: bytes
    def __init__(self, owner: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("run_id", "round", "agent_id", "seeds", "keys")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    agent_id: str
    seeds: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    keys: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., agent_id: _Optional[str] = ..., seeds: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ..., keys: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ...) -> None: ...

class UnmaskResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
