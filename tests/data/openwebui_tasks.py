# ruff: noqa: E501, W291  (verbatim prompt templates: long lines, trailing spaces)
"""Open WebUI 0.12 background-task prompts and request bodies (open-webui.md §1.5).

The prompts are Open WebUI's default templates (backend/open_webui/config.py)
with {{MESSAGES:END:n}} rendered; the bodies carry `stream: false` (or no
`stream` at all on the API path) and, for titles, `max_tokens`. Shared by the
unit tests of task detection and the e2e tests of task answers.
"""

from __future__ import annotations

HISTORY = """<chat_history>
USER: please fix the failing test in tests/test_parser.py
ASSISTANT: I fixed `parse_line`; the test passes now. Want me to continue with the follow-up cleanup?
</chat_history>"""

# Open WebUI 0.12.x defaults (backend/open_webui/config.py), with {{MESSAGES:END:n}} rendered.
TITLE_PROMPT = f"""### Task:
Generate a concise title summarizing the chat history.
### Guidelines:
- The title should clearly represent the main theme or subject of the conversation.
- Keep it short: 2-4 words is best.
- Do not use emojis, quotation marks, or special formatting.
- Write the title in the chat's primary language; default to English if multilingual.
- Prioritize accuracy over creativity.
- Your entire response must consist solely of the JSON object, without any introductory or concluding text.
- The output must be a single, raw JSON object, without any markdown code fences or other encapsulating text.
- Ensure no conversational text, affirmations, or explanations precede or follow the raw JSON output, as this will cause direct parsing failure.
### Output:
JSON format: {{ "title": "your concise title here" }}
### Examples:
- {{ "title": "Stock Trends" }},
- {{ "title": "Chocolate Chip Cookies" }},
- {{ "title": "Music Streaming" }},
- {{ "title": "Remote Work" }}
### Chat History:
{HISTORY}"""

TAGS_PROMPT = f"""### Task:
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

FOLLOW_UP_PROMPT = f"""### Task:
Suggest 3-5 relevant follow-up questions or prompts that the user might naturally ask next in this conversation as a **user**, based on the chat history, to help continue or deepen the discussion.
### Guidelines:
- Write all follow-up questions from the user’s point of view, directed to the assistant.
- Make questions concise, clear, and directly related to the discussed topic(s).
- Only suggest follow-ups that make sense given the chat content and do not repeat what was already covered.
- If the conversation is very short or not specific, suggest more general (but relevant) follow-ups the user might ask.
- Use the conversation's primary language; default to English if multilingual.
- Response must be a JSON object with a "follow_ups" key containing an array of strings, no extra text or formatting.
### Output:
JSON format: {{ "follow_ups": ["Question 1?", "Question 2?", "Question 3?"] }}
### Chat History:
{HISTORY}"""

QUERY_PROMPT = f"""### Task:
Analyze the chat history to determine the necessity of generating search queries, in the given language. By default, **prioritize generating 1-3 broad and relevant search queries** unless it is absolutely certain that no additional information is required. The aim is to retrieve comprehensive, updated, and valuable information even with minimal uncertainty. If no search is unequivocally needed, return an empty list.

### Guidelines:
- Respond **EXCLUSIVELY** with a JSON object. Any form of extra commentary, explanation, or additional text is strictly prohibited.
- When generating search queries, respond in the format: {{ "queries": ["query1", "query2"] }}, ensuring each query is distinct, concise, and relevant to the topic.
- If and only if it is entirely certain that no useful results can be retrieved by a search, return: {{ "queries": [] }}.
- Err on the side of suggesting search queries if there is **any chance** they might provide useful or updated information.
- Be concise and focused on composing high-quality search queries, avoiding unnecessary elaboration, commentary, or assumptions.
- Today's date is: 2025-01-01.
- Always prioritize providing actionable and broad queries that maximize informational coverage.

### Output:
Strictly return in JSON format: 
{{
  "queries": ["query1", "query2"]
}}

### Chat History:
{HISTORY}
"""

AUTOCOMPLETE_PROMPT = f"""### Task:
You are an autocompletion system. Continue the text in `<text>` based on the **completion type** in `<type>` and the given language.  

### **Instructions**:
1. Analyze `<text>` for context and meaning.  
2. Use `<type>` to guide your output:  
   - **General**: Provide a natural, concise continuation.  
   - **Search Query**: Complete as if generating a realistic search query.  
3. Start as if you are directly continuing `<text>`. Do **not** repeat, paraphrase, or respond as a model. Simply complete the text.  
4. Ensure the continuation:
   - Flows naturally from `<text>`.  
   - Avoids repetition, overexplaining, or unrelated ideas.  
5. If unsure, return: `{{ "text": "" }}`.  

### **Output Rules**:
- Respond only in JSON format: `{{ "text": "<your_completion>" }}`.

### **Examples**:
#### Example 1:  
Input:  
<type>General</type>  
<text>The sun was setting over the horizon, painting the sky</text>  
Output:  
{{ "text": "with vibrant shades of orange and pink." }}

#### Example 2:  
Input:  
<type>Search Query</type>  
<text>Top-rated restaurants in</text>  
Output:  
{{ "text": "New York City for Italian cuisine." }}  

---
### Context:
{HISTORY}
<type>General</type>  
<text>Write a title for my "tags" list</text>  
#### Output:
"""

IMAGE_PROMPT = f"""### Task:
Generate a detailed prompt for am image generation task based on the given language and context. Describe the image as if you were explaining it to someone who cannot see it. Include relevant details, colors, shapes, and any other important elements.

### Guidelines:
- Be descriptive and detailed, focusing on the most important aspects of the image.
- Avoid making assumptions or adding information not present in the image.
- Use the chat's primary language; default to English if multilingual.
- If the image is too complex, focus on the most prominent elements.

### Output:
Strictly return in JSON format:
{{
    "prompt": "Your detailed description here."
}}

### Chat History:
{HISTORY}"""


def body(prompt: str, **extra: object) -> dict[str, object]:
    return {"model": "bmo/local", "messages": [{"role": "user", "content": prompt}], **extra}


CASES = [
    ("title", body(TITLE_PROMPT, stream=False, max_tokens=1000), "title", str),
    ("tags", body(TAGS_PROMPT, stream=False), "tags", list),
    ("follow_ups", body(FOLLOW_UP_PROMPT, stream=False), "follow_ups", list),
    ("queries", body(QUERY_PROMPT, stream=False), "queries", list),
    ("title without stream", body(TITLE_PROMPT), "title", str),
]
# the names the e2e tests use
TITLE, TAGS, FOLLOW_UPS, QUERIES = TITLE_PROMPT, TAGS_PROMPT, FOLLOW_UP_PROMPT, QUERY_PROMPT
