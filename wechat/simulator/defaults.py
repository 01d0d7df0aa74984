"""The demo account the simulator starts with (and `make demo`, tests and benchmarks use):
credentials, one "order shipped" category template and one recent follower."""

from __future__ import annotations

from typing import Final

from config import env_var

DEMO_APP_ID: Final = "wx8c4e1f0a7d3b9265"
DEMO_APP_SECRET: Final = "5e0b7a9c3d1f46e8a2c94b7d06f1e3a5"
# Read by `python -m wechat.simulator` when --app-secret is not given (keeps it out of argv).
APP_SECRET_ENV: Final = env_var("simulator_app_secret")

DEMO_TEMPLATE_ID: Final = "Oq3nR8tB2kXo9LmWc4ZpYh7GdJ1sUeFa6NbQyTiKx0E"
DEMO_TEMPLATE_TITLE: Final = "订单发货通知"
DEMO_TEMPLATE_KEYS: Final = ("thing1", "character_string2", "time3", "amount4")
DEMO_TEMPLATE_VALUES: Final = (
    ("thing1", "无线降噪耳机"),  # goods
    ("character_string2", "SF1402887715320"),  # waybill number
    ("time3", "2024-05-01 10:30"),  # shipped at
    ("amount4", "¥299.00"),  # order amount
)

DEMO_OPENID: Final = "oia2TjuEGTNoeX76QEjQNrcURxG8"
# The account's original id: ToUserName of every callback push.
DEMO_ORIGINAL_ID: Final = "gh_7f083739789a"
# The demo account's server configuration (服务器配置): what `wxpush serve` gives both the
# simulator (to sign and encrypt its pushes) and the receiver (to check them).
DEMO_CALLBACK_TOKEN: Final = "wxpushDemoCallbackToken2026"
DEMO_ENCODING_AES_KEY: Final = "kWxPushDemoEncodingAESKey0123456789abcdefgh"
# Read by `python -m wechat.simulator` for the callback secrets (kept out of argv).
CALLBACK_TOKEN_ENV: Final = env_var("simulator_callback_token")
ENCODING_AES_KEY_ENV: Final = env_var("simulator_encoding_aes_key")


def demo_template_data() -> dict[str, dict[str, str]]:
    """The demo template's `data` in wire format: {key: {"value": ...}} (a fresh dict)."""
    return {key: {"value": value} for key, value in DEMO_TEMPLATE_VALUES}


# The demo WeCom group robot's webhook key (`POST /cgi-bin/webhook/send?key=…`): the simulator
# knows it from the start; `POST /_sim/robots` adds others. Real keys are UUIDs, and secret.
DEMO_ROBOT_KEY: Final = "5d1c7e2a-93b4-4f08-a6e1-2c8b0f4d7a39"
