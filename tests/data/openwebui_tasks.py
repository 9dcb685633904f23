# ruff: noqa: E501  (verbatim prompt templates)
"""Open WebUI 0.12 background-task request bodies, as it sends them (open-webui.md §1.5).

The prompts are Open WebUI's default templates with a two-message chat history
filled in; the bodies carry `stream: false` (or no `stream` at all on the API
path) and, for titles, `max_tokens`.
"""

from __future__ import annotations

HISTORY = (
    "<chat_history>\nUSER: How do I read a file in Python?\n"
    "ASSISTANT: Use open() with a with-statement.\n</chat_history>"
)

TITLE = f"""### Task:
Generate a concise, 3-5 word title with an emoji summarizing the chat history.
### Guidelines:
- The title should clearly represent the main theme or subject of the conversation.
- Use emojis that enhance understanding of the topic, but avoid quotation marks or special formatting.
- Write the title in the chat's primary language; default to English if multilingual.
- Prioritize accuracy over excessive creativity; keep it clear and simple.
- Your entire response must consist solely of the JSON object, without any introductory or concluding text.
- The output must be a single, raw JSON object, without any markdown code fences or other encapsulating text.
- Ensure no conversational text, affirmations, or explanations precede or follow the raw JSON output, as this will cause direct parsing failure.
### Output:
JSON format: {{ "title": "your concise title here" }}
### Examples:
- {{ "title": "📉 Stock Market Trends" }},
- {{ "title": "🍪 Perfect Chocolate Chip Recipe" }},
- {{ "title": "Evolution of Music Streaming" }},
- {{ "title": "Remote Work Productivity Tips" }},
- {{ "title": "Artificial Intelligence in Healthcare" }},
- {{ "title": "🎮 Video Game Development Insights" }}
### Chat History:
{HISTORY}"""

TAGS = f"""### Task:
Generate 1-3 broad tags categorizing the main themes of the chat history, along with 1-3 more specific subtopic tags.

### Guidelines:
- Start with high-level domains (e.g. Science, Technology, Philosophy, Arts, Politics, Business, Health, Sports, Entertainment, Education)
- Consider including relevant subfields/subdomains if they are strongly represented throughout the conversation
- If content is too short (less than 3 messages) or too diverse, use only ["General"]
- Use the chat's primary language; default to English if multilingual
- Prioritize accuracy over specificity

### Output:
JSON format: {{ "tags": ["tag1", "tag2", "tag3"] }}

### Chat History:
{HISTORY}"""

FOLLOW_UPS = f"""### Task:
Suggest 3-5 relevant follow-up questions or prompts that the user might naturally ask next in this conversation as a **user**, based on the chat history, to help continue or deepen the discussion.
### Guidelines:
- Write all follow-up questions from the user’s point of view, directed to the assistant.
- Make questions concise, clear, and directly related to the discussed topic(s).
- Only suggest follow-ups that make sense given the chat content and do not repeat what was already covered.
- If the conversation is very short or not specific, suggest more general (but relevant) follow-ups the user might ask.
- Use the conversation's primary language; default to English if multilingual.
- Response must be a JSON array of strings, no extra text or formatting.
### Output:
JSON format: {{ "follow_ups": ["Question 1?", "Question 2?", "Question 3?"] }}
### Chat History:
{HISTORY}"""

QUERIES = f"""### Task:
Analyze the chat history to determine the necessity of generating search queries, in the given language. By default, **prioritize generating 1-3 broad and relevant search queries** unless it is absolutely certain that no additional information is required.
### Output:
Strictly return in JSON format:
{{
  "queries": ["query1", "query2"]
}}
### Chat History:
{HISTORY}"""


def body(prompt: str, **extra: object) -> dict[str, object]:
    return {"model": "bmo/local", "messages": [{"role": "user", "content": prompt}], **extra}


CASES = [
    ("title", body(TITLE, stream=False, max_tokens=1000), "title", str),
    ("tags", body(TAGS, stream=False), "tags", list),
    ("follow_ups", body(FOLLOW_UPS, stream=False), "follow_ups", list),
    ("queries", body(QUERIES, stream=False), "queries", list),
    ("title without stream", body(TITLE), "title", str),
]
