# Seed 004's SDK example. Only the indentation lost in the document's extraction is restored.
import os, base64
from openai import OpenAI
client = OpenAI(
    base_url="https://api.modelverse.cn/v1",
    api_key=os.getenv("MODELVERSE_API_KEY", "YOUR_API_KEY")
)
res = client.images.generate(
    model="gpt-image-1",
    prompt="a beautiful flower",
    size="1024x1024",
    quality="high",
)
# gpt-image-1 返回 base64 数据
image_b64 = res.data[0].b64_json
raw = image_b64.split(",")[-1] if image_b64.startswith("data:") else image_b64
with open("image.png", "wb") as f:
    f.write(base64.b64decode(raw))
print("Saved to image.png")
