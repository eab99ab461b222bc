# Seed 004's requests multipart edit. Only the indentation lost in extraction is restored and the optional mask
# line is enabled.
import os, base64, requests
url = "https://api.modelverse.cn/v1/images/edits"
headers = {"Authorization": f"Bearer {os.getenv('MODELVERSE_API_KEY', '$MODELVERSE_API_KEY')}"}
files = {
    "image": ("beach.png", open("beach.png", "rb"), "image/png"),
    # 可选:提供 mask 来限定编辑区域
    "mask": ("mask.png", open("mask.png", "rb"), "image/png"),
}
data = {
    "model": "gpt-image-1",
    "prompt": "Add a beach ball in the center",
    "size": "1024x1024",
    "n": "1",
    "quality": "high",
    "output_format": "png",
    "output_compression": "100",
}
r = requests.post(url, headers=headers, files=files, data=data)
r.raise_for_status()
resp = r.json()
image_b64 = resp["data"][0]["b64_json"]
raw = image_b64.split(",")[-1] if image_b64.startswith("data:") else image_b64
with open("edit.png", "wb") as f:
    f.write(base64.b64decode(raw))
print("Saved to edit.png")
