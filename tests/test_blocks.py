"""The two Blocks: slugs, UI form metadata, secret masking, UTC datetimes, round trips."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentCreate, BlockSchemaCreate
from prefect.exceptions import ObjectAlreadyExists
from pydantic import SecretStr, ValidationError

from tasks.blocks import WeChatAccessToken, WeChatApp

SECRET = "app-secret-5b1f0c-should-never-show"
TOKEN = "88_token-value-d41d8cd98f-should-never-show"
CALLBACK = "callback-token-never-show"
AES = "A" * 43


def make_app(**overrides: object) -> WeChatApp:
    values: dict[str, object] = {
        "app_id": "wx0123456789abcdef",
        "app_secret": SECRET,
        "callback_token": CALLBACK,
        "encoding_aes_key": AES,
        "previous_encoding_aes_key": "B" * 43,
    }
    values.update(overrides)
    return WeChatApp(**values)  # type: ignore[arg-type]


#: The fields a wechat-app block saved before the account's limits existed does not have.
LIMIT_FIELDS = ("rate_per_second", "daily_quota")


async def save_older_form(name: str, **data: object) -> None:
    """Store `wechat-app/<name>` as wxpush did before the account's limits: its data and the
    schema it points at both without `rate_per_second` and `daily_quota`."""
    fields = WeChatApp.model_json_schema()
    for key in LIMIT_FIELDS:
        del fields["properties"][key]
    async with get_client() as client:
        await WeChatApp.aregister_type_and_schema(client=client)
        block_type = await client.read_block_type_by_slug(WeChatApp.get_block_type_slug())
        try:
            schema = await client.create_block_schema(
                BlockSchemaCreate(fields=fields, block_type_id=block_type.id)
            )
        except ObjectAlreadyExists:  # another test stored the same older form
            checksum = WeChatApp._calculate_schema_checksum(fields)
            schema = await client.read_block_schema_by_checksum(checksum)
        await client.create_block_document(
            BlockDocumentCreate(
                name=name, data=data, block_schema_id=schema.id, block_type_id=block_type.id
            )
        )


def test_slugs_follow_the_contract() -> None:
    assert WeChatApp.get_block_type_slug() == "wechat-app"
    assert WeChatAccessToken.get_block_type_slug() == "wechat-access-token"


def test_every_secret_field_is_masked_in_the_schema() -> None:
    assert WeChatApp.model_json_schema()["secret_fields"] == [
        "app_secret",
        "callback_token",
        "encoding_aes_key",
        "previous_encoding_aes_key",
    ]
    assert WeChatAccessToken.model_json_schema()["secret_fields"] == ["access_token"]


def test_form_fields_have_titles_and_descriptions_for_operators() -> None:
    props = WeChatApp.model_json_schema()["properties"]
    for name, prop in props.items():
        assert prop.get("title") and prop.get("description"), name
    assert props["token_mode"]["enum"] == ["stable", "classic"]
    assert props["kind"]["enum"] == ["official_account", "wecom"]


def test_repr_and_str_never_show_a_secret() -> None:
    app = make_app()
    token = WeChatAccessToken(
        access_token=TOKEN, expires_at=datetime.now(UTC), fetched_at=datetime.now(UTC)
    )
    for text in (repr(app), str(app), repr(token), str(token), f"{app!r} {token}"):
        for secret in (SECRET, TOKEN, CALLBACK, AES):
            assert secret not in text
    assert "**********" in repr(app)


def test_defaults_and_validation() -> None:
    app = make_app(api_base_url="http://127.0.0.1:8090/")
    assert app.api_base_url == "http://127.0.0.1:8090"  # trailing slash dropped
    assert (app.kind, app.token_mode) == ("official_account", "stable")
    assert make_app(callback_token=None).callback_token is None
    with pytest.raises(ValidationError):
        make_app(api_base_url="api.weixin.qq.com")
    with pytest.raises(ValidationError):
        make_app(token_mode="force")
    with pytest.raises(ValidationError):
        make_app(app_id="")


def test_the_account_limits_default_to_unlimited_and_wechats_quota() -> None:
    app = make_app()
    assert app.rate_per_second is None, "empty = unlimited"
    assert app.daily_quota == 100_000, "WeChat's default template quota"
    assert make_app(rate_per_second=0.1, daily_quota=1).rate_per_second == 0.1
    assert make_app(rate_per_second="12.5", daily_quota="250000").daily_quota == 250_000


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"rate_per_second": 0.05}, "greater than or equal to 0.1"),
        ({"rate_per_second": 0}, "greater than or equal to 0.1"),
        ({"rate_per_second": -5}, "greater than or equal to 0.1"),
        ({"rate_per_second": float("inf")}, "finite number"),
        ({"rate_per_second": "fast"}, "valid number"),
        ({"daily_quota": 0}, "greater than or equal to 1"),
        ({"daily_quota": 1.5}, "valid integer"),
        ({"daily_quota": None}, "valid integer"),
    ],
)
def test_a_bad_account_limit_is_refused_with_its_field(
    overrides: dict[str, object], reason: str
) -> None:
    with pytest.raises(ValidationError) as info:
        make_app(**overrides)
    (error,) = info.value.errors(include_input=False)
    assert error["loc"] == (next(iter(overrides)),) and reason in error["msg"]
    for secret in (SECRET, CALLBACK, AES):
        assert secret not in str(info.value)


def test_the_account_limits_are_plain_boxes_in_the_form() -> None:
    props = WeChatApp.model_json_schema()["properties"]
    rate, quota = props["rate_per_second"], props["daily_quota"]
    assert (rate["title"], quota["title"]) == ("Account rate limit", "Daily template quota")
    assert rate["type"] == "number" and "anyOf" not in rate, "one box, empty = unlimited"
    assert rate["minimum"] == 0.1 and "default" not in rate
    assert (quota["type"], quota["minimum"], quota["default"]) == ("integer", 1, 100_000)
    assert "/cgi-bin/openapi/quota/get" in quota["description"]
    assert "campaign's own rate limit still caps" in rate["description"]
    # After the sending fields, before the receiver's: the form's order is the declaration's.
    order = list(props)
    assert order.index("token_mode") < order.index("rate_per_second") < order.index("daily_quota")
    assert order.index("daily_quota") < order.index("callback_token")


def test_token_times_are_utc_aware() -> None:
    naive = datetime(2030, 1, 1, 8, 0)
    east8 = datetime(2030, 1, 1, 16, 0, tzinfo=timezone(timedelta(hours=8)))
    token = WeChatAccessToken(access_token=TOKEN, expires_at=east8, fetched_at=naive)
    assert token.expires_at == datetime(2030, 1, 1, 8, 0, tzinfo=UTC)
    assert token.expires_at.tzinfo == UTC and token.fetched_at.tzinfo == UTC
    assert token.fetched_at == datetime(2030, 1, 1, 8, 0, tzinfo=UTC)


def test_usable_and_same_token() -> None:
    now = datetime.now(UTC)
    token = WeChatAccessToken(
        access_token=TOKEN, expires_at=now + timedelta(seconds=100), fetched_at=now
    )
    assert token.usable(0, now=now) and token.usable(99, now=now)
    assert not token.usable(100, now=now)
    assert token.same_token(TOKEN) and token.same_token(SecretStr(TOKEN))
    assert not token.same_token("other") and not token.same_token(None)


@pytest.mark.harness
async def test_round_trip_through_the_server(prefect_harness: object) -> None:
    name = f"blk-{uuid.uuid4().hex[:8]}"
    fetched = datetime.now(UTC).replace(microsecond=0)
    await make_app().asave(name)
    await WeChatAccessToken(
        access_token=TOKEN, expires_at=fetched + timedelta(hours=2), fetched_at=fetched
    ).asave(name)

    app = await WeChatApp.aload(name)
    token = await WeChatAccessToken.aload(name)
    assert app.app_secret.get_secret_value() == SECRET
    assert app.encoding_aes_key is not None and app.encoding_aes_key.get_secret_value() == AES
    assert token.access_token.get_secret_value() == TOKEN
    assert token.expires_at == fetched + timedelta(hours=2)
    assert token.expires_at.tzinfo is not None and token.fetched_at.utcoffset() == timedelta(0)

    # Anyone reading without asking for secrets sees masks only.
    async with get_client() as client:
        doc = await client.read_block_document_by_name(
            name, "wechat-access-token", include_secrets=False
        )
        app_doc = await client.read_block_document_by_name(
            name, "wechat-app", include_secrets=False
        )
    assert TOKEN not in str(doc.data) and SECRET not in str(app_doc.data)
    assert app_doc.data["app_id"] == "wx0123456789abcdef"


@pytest.mark.harness
async def test_the_account_limits_round_trip(prefect_harness: object) -> None:
    name = f"blk-{uuid.uuid4().hex[:8]}"
    await make_app(rate_per_second=12.5, daily_quota=250_000).asave(name)
    app = await WeChatApp.aload(name)
    assert (app.rate_per_second, app.daily_quota) == (12.5, 250_000)


@pytest.mark.harness
async def test_a_block_saved_before_the_account_limits_loads_with_the_defaults(
    prefect_harness: object,
) -> None:
    name = f"blk-{uuid.uuid4().hex[:8]}"
    await save_older_form(name, app_id="wx0123456789abcdef", app_secret=SECRET)
    async with get_client() as client:
        stored = await client.read_block_document_by_name(name, "wechat-app")
    assert stored.block_schema is not None
    assert not set(LIMIT_FIELDS) & (
        set(stored.data) | set(stored.block_schema.fields["properties"])
    )

    app = await WeChatApp.aload(name)
    assert (app.rate_per_second, app.daily_quota) == (None, 100_000)
    assert app.app_secret.get_secret_value() == SECRET and app.token_mode == "stable"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"app_id": "wxapp"}, "AppID 'wxapp' is not wx followed by 16 lowercase hex"),
        ({"app_id": "wx0123456789ABCDEF"}, "is not wx followed by 16 lowercase hex"),
        ({"app_id": "ww0123456789abcdef"}, "is not wx followed by 16"),  # a CorpID
        ({"encoding_aes_key": "A" * 42}, "EncodingAESKey must be 43 characters, got 42"),
        ({"encoding_aes_key": "A" * 42 + "="}, "must contain only A-Z, a-z and 0-9"),
        ({"previous_encoding_aes_key": "short"}, "previous EncodingAESKey must be 43"),
        ({"callback_token": ""}, "the callback Token is empty"),
        ({"callback_token": " cb-secret-9 "}, "leading or trailing spaces"),
    ],
)
def test_a_malformed_identifier_is_refused_with_its_reason(
    overrides: dict[str, object], reason: str
) -> None:
    with pytest.raises(ValidationError, match=reason) as info:
        make_app(**overrides)
    secret = str(next(iter(overrides.values()))).strip()
    if "app_id" not in overrides and secret:
        assert secret not in str(info.value)  # a secret never reaches the error's text


def test_a_wecom_corp_id_is_accepted_for_a_wecom_account() -> None:
    assert make_app(kind="wecom", app_id="ww0123456789abcdef").app_id == "ww0123456789abcdef"
    with pytest.raises(ValidationError, match="CorpID"):
        make_app(kind="wecom", app_id="corp-1")
