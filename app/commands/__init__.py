"""Commands: imperative requests to change a stream; each has a pure decide()."""

from app.commands.append_content import AppendContent
from app.commands.ask_permission import AskPermission
from app.commands.cancel_run import CancelRun
from app.commands.decide_permission import DecidePermission
from app.commands.finish_run import FinishRun
from app.commands.fire_run import FireRun
from app.commands.record_model_call import RecordModelCall
from app.commands.record_tool_call import RecordToolCall
from app.commands.start_run import StartRun

__all__ = [
    "AppendContent",
    "AskPermission",
    "CancelRun",
    "DecidePermission",
    "FinishRun",
    "FireRun",
    "RecordModelCall",
    "RecordToolCall",
    "StartRun",
]
